#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Ansible module xdplb_config: lbd's whole configuration from one TOML document (lbctl apply)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: xdplb_config
short_description: Make the whole configuration of the xdplb load balancer that of one TOML document
version_added: 0.1.0
description:
  - Sends a desired configuration to lbd through C(lbctl --json apply -f FILE). lbd parses it with its
    own configuration parser, compares it with the running state and applies the difference as one
    change (one reconcile, one save of its state file), all of it or none.
  - The document holds the desired-state tables of lbd's configuration file, in the same form
    C([[vip]]) (C(address), C(proto), C(mode), C([vip.health]), C([[vip.backend]]) with C(address) and
    C(weight)), C([firewall]) with C(block) and C(allow) lists of prefixes, C([ratelimit.default]) and
    C([[ratelimit.override]]) (C(cidr), C(rate), C(burst), C(scope)).
  - It is the whole configuration - what it leaves out is removed. Health status is live and kept; a
    drained backend stays drained, the document's weight becoming the one undrain restores.
  - Check mode runs C(lbctl apply --dry-run), which changes nothing; C(changed) says whether the
    document differs from the running state. Diff mode shows lbd's diff lines
    (C(+ vip 10.0.0.10:80/tcp nat), C(~ weight 10.0.0.10:80/tcp 10.0.2.1:8080 100 -> 50)).
  - Do not combine it with the other xdplb modules on the same lbd - each run of this one takes back
    what they changed.
author:
  - xdplb contributors
options:
  src:
    description:
      - Path of the TOML file on the managed host.
      - Exactly one of C(src) and C(content).
    type: path
  content:
    description:
      - The TOML document itself, for example from C(lookup('template', 'lb.toml.j2')).
      - Exactly one of C(src) and C(content).
    type: str
extends_documentation_fragment:
  - xdplb.lb.lbctl
'''

EXAMPLES = r'''
- name: The whole load-balancer configuration, from a template
  xdplb.lb.xdplb_config:
    content: "{{ lookup('ansible.builtin.template', 'lb.toml.j2') }}"

- name: From a file already on the host
  xdplb.lb.xdplb_config:
    src: /etc/xdplb/desired.toml

- name: Inline
  xdplb.lb.xdplb_config:
    content: |
      [[vip]]
      address = "10.0.0.10:80"
      proto = "tcp"
      [vip.health]
      proto = "http:/healthz"
      [[vip.backend]]
      address = "10.0.2.1:8080"
      [[vip.backend]]
      address = "10.0.2.2:8080"
      weight = 50

      [firewall]
      block = ["192.0.2.0/24"]

      [ratelimit.default]
      rate = 1000
      burst = 200
'''

RETURN = r'''
changes:
  description: The differences between lbd's state before the task and the document (applied, or in check mode that would be), as C(lbctl --json apply) reports them (at most 10000; C(total) counts them all).
  returned: success
  type: list
  elements: dict
  sample: [{op: change, kind: weight, vip: 10.0.0.10:80/tcp, target: 10.0.2.2:8080, from: "100", to: "50",
            line: "~ weight 10.0.0.10:80/tcp 10.0.2.2:8080 100 -> 50"}]
lines:
  description: The diff lines of C(changes).
  returned: success
  type: list
  elements: str
  sample: ["+ vip 10.0.0.10:80/tcp nat", "- block 198.51.100.0/24"]
total:
  description: How many differences there are.
  returned: success
  type: int
  sample: 2
commands:
  description: The lbctl command line that changed (or in check mode, would change) lbd.
  returned: always
  type: list
  elements: str
  sample: ["lbctl apply -f /etc/xdplb/desired.toml"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xdplb.lb.plugins.module_utils.lbctl import Lbctl, argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            src=dict(type='path'),
            content=dict(type='str'),
        ),
        mutually_exclusive=[('src', 'content')],
        required_one_of=[('src', 'content')],
        supports_check_mode=True,
    )
    p = module.params
    lbctl = Lbctl(module)
    src = p['src']
    content = p['content']
    args = ['apply', '-f', src if src else '-']
    # Check mode asks lbd for the difference only: nothing is changed. Outside check mode the
    # one call computes and applies it (lbd does both in one change, so there is no moment
    # between a read and a write for another client to change the state).
    run = args + ['--dry-run'] if module.check_mode else args
    data = None if src else content.encode('utf-8')
    # lbctl's own message (file, line, column and key) fails the task when the document is bad.
    reply = lbctl._run(run, data=data)
    changes = reply.get('changes', [])
    total = int(reply.get('total', 0))
    lines = [c.get('line', '') for c in changes]
    if total > len(changes):
        lines.append('... and %d more' % (total - len(changes)))
    if total > 0:
        lbctl.commands.append(Lbctl.show(args))
    result = dict(changed=total > 0, commands=lbctl.commands, changes=changes, lines=lines, total=total)
    if module._diff:
        result['diff'] = dict(prepared='\n'.join(lines) + '\n' if lines else '')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
