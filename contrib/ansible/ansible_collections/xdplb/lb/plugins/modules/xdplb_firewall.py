#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Ansible module xdplb_firewall: block or allow rules of lbd's CIDR firewall."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: xdplb_firewall
short_description: Manage block and allow rules of the xdplb CIDR firewall
version_added: 0.1.0
description:
  - Adds or removes source-prefix rules of lbd's firewall, checked in XDP before rate limiting
    and load balancing, through C(lbctl --json block/allow ...). The longest matching prefix
    wins, so an allow rule punches a hole in a wider block.
  - The rules are read first (C(lbctl fw list)); only missing (or extra) prefixes are changed.
  - A prefix that has a rule with the other action is moved to this action.
  - With C(exclusive=true) the prefixes become the whole list of this action, swapped in one step
    (C(lbctl block load - --replace)); the rules of the other action stay.
author:
  - xdplb contributors
options:
  action:
    description: Which rules. C(block) drops matching sources, C(allow) exempts them (also from rate limits).
    type: str
    choices: [block, allow]
    required: true
  prefixes:
    description:
      - IPv4 prefixes such as C(192.0.2.0/24); a bare address is a C(/32).
      - A prefix with host bits set (C(10.0.0.1/8)) is refused with lbctl's message.
    type: list
    elements: str
    required: true
    aliases: [cidr, cidrs]
  state:
    description: C(present) makes sure the prefixes have a rule with this action, C(absent) that they have none.
    type: str
    choices: [present, absent]
    default: present
  exclusive:
    description: With C(state=present), remove every rule of this action whose prefix is not listed.
    type: bool
    default: false
extends_documentation_fragment:
  - xdplb.lb.lbctl
'''

EXAMPLES = r'''
- name: Block two networks and a host
  xdplb.lb.xdplb_firewall:
    action: block
    prefixes: [10.0.0.0/8, 198.51.100.0/24, 192.0.2.7]

- name: A hole in the block
  xdplb.lb.xdplb_firewall:
    action: allow
    prefixes: [10.1.2.0/24]

- name: A published drop list becomes the whole block list
  xdplb.lb.xdplb_firewall:
    action: block
    prefixes: "{{ lookup('file', 'drop.txt').splitlines() | map('regex_replace', '\\s*;.*$', '') | select | list }}"
    exclusive: true

- name: Unblock a host
  xdplb.lb.xdplb_firewall:
    action: block
    prefixes: [192.0.2.7]
    state: absent
'''

RETURN = r'''
added:
  description: Prefixes that got a rule with this action (or would, in check mode).
  returned: success
  type: list
  elements: str
  sample: [10.0.0.0/8, 192.0.2.7/32]
removed:
  description: Prefixes whose rule with this action was removed (or would be).
  returned: success
  type: list
  elements: str
  sample: []
rules:
  description:
    - The prefixes with this action after the task, sorted.
    - In diff mode the prefixes of both actions show before and after, as C(block) and C(allow) lists.
  returned: success
  type: list
  elements: str
  sample: [10.0.0.0/8, 192.0.2.7/32, 198.51.100.0/24]
commands:
  description: The lbctl command lines that changed (or in check mode, would change) lbd.
  returned: always
  type: list
  elements: str
  sample: ["lbctl block add 10.0.0.0/8 192.0.2.7/32"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible_collections.xdplb.lb.plugins.module_utils.lbctl import Lbctl, argument_spec, cidr_text

# Prefixes per `add`/`remove` command line; more go through `load -` (standard input).
ARGV_CHUNK = 512


def normalize(prefix):
    """``192.0.2.7`` -> ``192.0.2.7/32``, as lbd lists it; None for what lbctl would refuse."""
    return cidr_text(to_text(prefix).strip())


def chunks(items, n):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            action=dict(type='str', required=True, choices=['block', 'allow']),
            prefixes=dict(type='list', elements='str', required=True, aliases=['cidr', 'cidrs']),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            exclusive=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    action = p['action']
    other = 'allow' if action == 'block' else 'block'
    lbctl = Lbctl(module)

    wanted = []
    for raw in p['prefixes']:
        net = normalize(raw)
        if net is None:
            # lbctl's own message, without touching anything: `add` checks every prefix
            # before it connects. Check mode never runs a changing command, so it says so.
            if module.check_mode:
                module.fail_json(msg="invalid CIDR '%s' (lbctl refuses it; run without --check for its message)" % raw)
            lbctl.change([action, 'add', raw])
            module.fail_json(msg='lbctl accepted %r, which this module cannot parse' % raw)
        if net not in wanted:
            wanted.append(net)

    rules = lbctl.query(['fw', 'list']).get('rules', [])
    mine = sorted(r['cidr'] for r in rules if r.get('action') == action)
    theirs = set(r['cidr'] for r in rules if r.get('action') == other)
    have = set(mine)

    if p['state'] == 'absent':
        removed = [c for c in wanted if c in have]
        for part in chunks(removed, ARGV_CHUNK):
            lbctl.change([action, 'remove'] + part)
        after = sorted(have - set(removed))
        lbctl.exit(bool(removed), {action: mine, other: sorted(theirs)},
                   {action: after, other: sorted(theirs)},
                   added=[], removed=removed, rules=after)

    added = [c for c in wanted if c not in have]
    moved = [c for c in added if c in theirs]
    extra = sorted(have - set(wanted)) if p['exclusive'] else []

    if p['exclusive'] and (added or extra):
        # One atomic swap of this action's list; a rule of the other action on a listed
        # prefix has to go first (lbd refuses two actions for one prefix).
        for part in chunks(moved, ARGV_CHUNK):
            lbctl.change([other, 'remove'] + part)
        lbctl.change([action, 'load', '-', '--replace'], data='\n'.join(wanted) + '\n')
    elif added:
        for part in chunks(moved, ARGV_CHUNK):
            lbctl.change([other, 'remove'] + part)
        if len(added) <= ARGV_CHUNK:
            lbctl.change([action, 'add'] + added)
        else:
            lbctl.change([action, 'load', '-'], data='\n'.join(added) + '\n')
    after = sorted((have | set(added)) - set(extra))
    lbctl.exit(bool(lbctl.commands), {action: mine, other: sorted(theirs)},
               {action: after, other: sorted(theirs - set(moved))},
               added=added, removed=extra, rules=after)


if __name__ == '__main__':
    main()
