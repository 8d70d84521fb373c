#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Ansible module xdplb_backend: a backend of an lbd VIP, its weight, and draining."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: xdplb_backend
short_description: Manage a backend (real server) of an xdplb VIP
version_added: 0.1.0
description:
  - Adds, reweights, drains or removes a backend of a VIP of lbd, the xdplb XDP layer-4 load
    balancer, through C(lbctl --json backend ...).
  - The VIP's backends are read first (C(lbctl backend list)); nothing is changed when the
    backend already matches.
  - Draining (C(state=drained)) sets the weight to 0 and lets lbd remember the old weight; new
    flows avoid the backend, tracked flows go on until they end. C(state=present) on a drained
    backend without C(weight) gives it the remembered weight back (C(lbctl backend undrain)).
author:
  - xdplb contributors
options:
  vip:
    description: The VIP as C(ADDR:PORT), for example C(10.0.0.10:80). It must exist (M(xdplb.lb.xdplb_vip)).
    type: str
    required: true
  protocol:
    description: L4 protocol of the VIP.
    type: str
    choices: [tcp, udp]
    required: true
  address:
    description: IPv4 address of the backend.
    type: str
    required: true
  port:
    description: Port of the backend. In the DSR modes it must be the VIP's port.
    type: int
    required: true
  weight:
    description:
      - Relative weight in the VIP's Maglev table; 0 takes no new flows.
      - When left out, a new backend gets 100 and an existing one keeps its weight.
      - With C(state=drained), the weight to add a missing backend with before draining it.
    type: int
  state:
    description:
      - C(present) adds the backend (or sets its weight); C(drained) drains it (adding it first
        when missing); C(absent) removes it.
      - C(absent) on a VIP that does not exist is not an error (the backend is absent).
    type: str
    choices: [present, drained, absent]
    default: present
extends_documentation_fragment:
  - xdplb.lb.lbctl
seealso:
  - module: xdplb.lb.xdplb_vip
'''

EXAMPLES = r'''
- name: Two backends of a VIP, one with twice the share of flows
  xdplb.lb.xdplb_backend:
    vip: 10.0.0.10:80
    protocol: tcp
    address: "{{ item.address }}"
    port: 8080
    weight: "{{ item.weight }}"
  loop:
    - {address: 10.0.2.1, weight: 100}
    - {address: 10.0.2.2, weight: 200}

- name: Drain a backend for maintenance (tracked flows are not cut)
  xdplb.lb.xdplb_backend:
    vip: 10.0.0.10:80
    protocol: tcp
    address: 10.0.2.1
    port: 8080
    state: drained

- name: Put it back with the weight it had
  xdplb.lb.xdplb_backend:
    vip: 10.0.0.10:80
    protocol: tcp
    address: 10.0.2.1
    port: 8080

- name: Remove a backend
  xdplb.lb.xdplb_backend:
    vip: 10.0.0.10:80
    protocol: tcp
    address: 10.0.2.2
    port: 8080
    state: absent
'''

RETURN = r'''
backend:
  description: The backend as lbd reports it after the task (C(lbctl --json backend list)); empty when absent.
  returned: success
  type: dict
  sample: {address: 10.0.2.1, port: 8080, weight: 0, id: 0, health: up, tracked_flows: 12, drained_from: 100}
commands:
  description: The lbctl command lines that changed (or in check mode, would change) lbd.
  returned: always
  type: list
  elements: str
  sample: ["lbctl backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xdplb.lb.plugins.module_utils.lbctl import Lbctl, argument_spec, config_view

DEFAULT_WEIGHT = 100


def config_of(backend):
    """The configurable part of a backend (no ids, health or flow counts): what diff mode shows."""
    view = config_view(backend, ('address', 'port', 'weight'))
    if view and backend.get('drained_from'):
        view['drained_from'] = backend['drained_from']
    return view


def find_vip(lbctl, vip, protocol):
    return lbctl.find(['vip', 'list'], 'vips',
                      lambda v: ('%s:%s' % (v.get('address'), v.get('port')), v.get('protocol'))
                      == (vip, protocol))


def find_backend(lbctl, vip, protocol, address, port):
    return lbctl.find(['backend', 'list', '--vip', vip, '--proto', protocol], 'backends',
                      lambda b: (b.get('address'), b.get('port')) == (address, port))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            vip=dict(type='str', required=True),
            protocol=dict(type='str', required=True, choices=['tcp', 'udp']),
            address=dict(type='str', required=True),
            port=dict(type='int', required=True),
            weight=dict(type='int'),
            state=dict(type='str', default='present', choices=['present', 'drained', 'absent']),
        ),
        supports_check_mode=True,
    )
    p = module.params
    lbctl = Lbctl(module)
    vip_ref = ['--vip', p['vip'], '--proto', p['protocol']]
    target = '%s:%d' % (p['address'], p['port'])
    state = p['state']

    if find_vip(lbctl, p['vip'], p['protocol']) is None:
        if state == 'absent':
            lbctl.exit(False, {}, {}, backend={})
        if module.check_mode:
            # The VIP may be added by an earlier task that check mode did not run.
            weight = p['weight'] if p['weight'] is not None else DEFAULT_WEIGHT
            lbctl.change(['backend', 'add'] + vip_ref + [target, '--weight', str(weight)])
            lbctl.exit(True, {}, {'address': p['address'], 'port': p['port'], 'weight': weight},
                       backend={}, msg='vip %s/%s does not exist (yet)' % (p['vip'], p['protocol']))
        current = None
    else:
        current = find_backend(lbctl, p['vip'], p['protocol'], p['address'], p['port'])
    before = config_of(current)
    predicted = dict(current or {})

    if state == 'absent':
        if current is not None:
            lbctl.change(['backend', 'remove'] + vip_ref + [target])
        predicted = {}
    else:
        if current is None:
            weight = p['weight'] if p['weight'] is not None else DEFAULT_WEIGHT
            # Left to lbd (and lbctl) to refuse a bad address, port or weight, in their words.
            lbctl.change(['backend', 'add'] + vip_ref + [target, '--weight', str(weight)])
            predicted = dict(address=p['address'], port=p['port'], weight=weight)
        elif state == 'present' and p['weight'] is not None and current.get('weight') != p['weight']:
            lbctl.change(['backend', 'set-weight'] + vip_ref + [target, '--weight', str(p['weight'])])
            predicted['weight'] = p['weight']
            predicted.pop('drained_from', None)
        elif state == 'present' and p['weight'] is None and current.get('drained_from'):
            lbctl.change(['backend', 'undrain'] + vip_ref + [target])
            predicted['weight'] = current['drained_from']
            predicted.pop('drained_from', None)
        if state == 'drained' and predicted.get('weight') != 0:
            lbctl.change(['backend', 'drain'] + vip_ref + [target])
            predicted['drained_from'] = predicted.get('weight')
            predicted['weight'] = 0

    after = lbctl.after(current, predicted,
                        lambda: state != 'absent' and find_backend(lbctl, p['vip'], p['protocol'],
                                                                   p['address'], p['port']))
    lbctl.exit(bool(lbctl.commands), before, config_of(after), backend=after)


if __name__ == '__main__':
    main()
