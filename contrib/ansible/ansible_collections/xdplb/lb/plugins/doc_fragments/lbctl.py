# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""The options every xdplb module shares: where lbctl is and how it reaches lbd."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r'''
options:
  lbctl_path:
    description:
      - Path of the C(lbctl) binary on the managed host.
      - By default C(lbctl) is looked for on C(PATH), then in C(/usr/local/bin) and C(/usr/bin).
    type: path
  socket:
    description:
      - lbd's gRPC Unix socket (C(lbctl --socket)).
      - By default lbctl uses C(LBCTL_SOCKET) from the task's environment, else C(/run/xdplb/lbd.sock).
    type: path
  addr:
    description:
      - Talk to lbd over TCP at this URL (C(lbctl --addr)), for example C(http://127.0.0.1:50051),
        instead of the Unix socket.
    type: str
  timeout:
    description:
      - Timeout for connecting to lbd and for each request (C(lbctl --timeout)), for example C(5s) or C(500ms).
    type: str
    default: 5s
requirements:
  - C(lbctl) on the managed host, and a running lbd it can reach.
notes:
  - Supports check mode and diff mode. In check mode lbctl is run only to read lbd's state.
  - A failing lbctl call fails the task with lbctl's error text as C(msg) (and C(rc), C(stderr)).
'''
