#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Ansible module xdplb_ratelimit: lbd's default rate-limit policy or a prefix's override."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: xdplb_ratelimit
short_description: Manage per-client rate limits of the xdplb load balancer
version_added: 0.1.0
description:
  - Sets or removes a rate-limit policy of lbd through C(lbctl --json ratelimit ...). Every client
    (source address) gets its own token bucket of C(rate) packets per second and C(burst) packets
    at once, checked in XDP before load balancing, on packets to a VIP.
  - Without C(cidr) the module manages the default policy, which every client falls under unless
    an override's prefix contains it (the longest such prefix wins).
  - The policies are read first (C(lbctl ratelimit list)); nothing is changed when the policy
    already matches.
author:
  - xdplb contributors
options:
  cidr:
    description:
      - IPv4 prefix of an override, for example C(192.0.2.0/24) (a bare address is a C(/32)).
      - Left out, the default policy.
    type: str
  rate:
    description: Packets per second per client; 0 means no limit (for example to exempt a prefix). Required with C(state=present).
    type: int
  burst:
    description: Packets a client may send at once; at least 1 when C(rate) is above 0. Required then.
    type: int
  scope:
    description: Which packets count. C(all), or C(new-flows) (a TCP SYN, the first packet of a UDP flow).
    type: str
    choices: [all, new-flows]
    default: all
  state:
    description:
      - C(present) sets the policy; C(absent) removes an override, or resets the default policy
        to no limit.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - xdplb.lb.lbctl
'''

EXAMPLES = r'''
- name: Default, every client at most 1000 packets/s, bursts of 200
  xdplb.lb.xdplb_ratelimit:
    rate: 1000
    burst: 200

- name: At most 20 new connections per second from each client of a noisy network
  xdplb.lb.xdplb_ratelimit:
    cidr: 192.0.2.0/24
    rate: 20
    burst: 5
    scope: new-flows

- name: No limit for the internal network
  xdplb.lb.xdplb_ratelimit:
    cidr: 10.0.0.0/8
    rate: 0

- name: Back to the default for 192.0.2.0/24
  xdplb.lb.xdplb_ratelimit:
    cidr: 192.0.2.0/24
    state: absent
'''

RETURN = r'''
rate_limit:
  description: The policy as lbd reports it after the task (C(lbctl --json ratelimit list)); empty when absent.
  returned: success
  type: dict
  sample: {cidr: 192.0.2.0/24, rate: 20, burst: 5, scope: new-flows, id: 1, allowed: 310, dropped: 48211}
commands:
  description: The lbctl command lines that changed (or in check mode, would change) lbd.
  returned: always
  type: list
  elements: str
  sample: ["lbctl ratelimit set --rate 20 --burst 5 --scope new-flows --cidr 192.0.2.0/24"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xdplb.lb.plugins.module_utils.lbctl import Lbctl, argument_spec, cidr_text, config_view

NO_LIMIT = dict(rate=0, burst=0, scope='all')


def normalize(cidr):
    """``192.0.2.7`` -> ``192.0.2.7/32`` as lbd lists it; the text itself when it is not a
    prefix (lbctl then says why)."""
    if cidr is None:
        return None
    text = cidr.strip()
    return cidr_text(text) or text


def config_of(policy):
    """The configurable part of a policy (no ids or counters): what diff mode shows."""
    return config_view(policy, ('cidr', 'rate', 'burst', 'scope'))


def find(lbctl, cidr):
    return lbctl.find(['ratelimit', 'list'], 'rate_limits', lambda r: r.get('cidr') == cidr)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            cidr=dict(type='str'),
            rate=dict(type='int'),
            burst=dict(type='int'),
            scope=dict(type='str', default='all', choices=['all', 'new-flows']),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        required_if=[('state', 'present', ['rate'])],
        supports_check_mode=True,
    )
    p = module.params
    lbctl = Lbctl(module)
    cidr = normalize(p['cidr'])
    cidr_flag = ['--cidr', cidr] if cidr else []
    current = find(lbctl, cidr)
    before = config_of(current)

    if p['state'] == 'absent':
        if cidr is None:
            # The default policy always exists; "absent" is "no limit".
            if current is not None and current.get('rate', 0) != 0:
                lbctl.change(['ratelimit', 'remove'])
            predicted = dict(NO_LIMIT, cidr=None)
        else:
            if current is not None:
                lbctl.change(['ratelimit', 'remove'] + cidr_flag)
            predicted = {}
    else:
        rate, burst, scope = p['rate'], p['burst'], p['scope']
        if rate == 0:
            # lbd keeps no burst or scope for "no limit".
            wanted = dict(NO_LIMIT)
        else:
            wanted = dict(rate=rate, burst=burst, scope=scope)
        if current is None or any(current.get(k) != v for k, v in wanted.items()):
            args = ['ratelimit', 'set', '--rate', str(rate)]
            if burst is not None:
                args += ['--burst', str(burst)]
            args += ['--scope', scope] + cidr_flag
            # lbctl checks the values (burst at least 1 with a rate, the prefix) in its words.
            lbctl.change(args)
        predicted = dict(wanted, cidr=cidr)

    after = lbctl.after(current, predicted, lambda: find(lbctl, cidr))
    lbctl.exit(bool(lbctl.commands), before, config_of(after), rate_limit=after)


if __name__ == '__main__':
    main()
