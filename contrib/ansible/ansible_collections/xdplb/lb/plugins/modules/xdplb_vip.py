#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Ansible module xdplb_vip: a VIP of lbd, its forwarding mode and health check."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: xdplb_vip
short_description: Manage a virtual IP (VIP) of the xdplb load balancer
version_added: 0.1.0
description:
  - Adds or removes a VIP of lbd, the xdplb XDP layer-4 load balancer, and keeps its forwarding
    mode and health check as given, through C(lbctl --json vip ...).
  - The VIP is read first (C(lbctl vip list)); nothing is changed when it already matches.
  - Changing the mode of an existing VIP (C(lbctl vip set-mode)) applies to new flows; tracked
    flows keep the mode they started with.
  - Changing the health check (C(lbctl vip set-health)) replaces the whole check; backends keep
    their up/down status.
author:
  - xdplb contributors
options:
  address:
    description: IPv4 address of the VIP.
    type: str
    required: true
  port:
    description: Port of the VIP.
    type: int
    required: true
  protocol:
    description: L4 protocol of the VIP.
    type: str
    choices: [tcp, udp]
    required: true
  mode:
    description:
      - Forwarding mode. C(nat) is full NAT; C(l2dsr) and C(ipip) are direct server return
        (prepare the backends with C(lbctl backend-setup); for C(ipip) with C(--lb-source) set to
        the balancers' C([ipip] source), from which alone the backends then accept IPIP).
      - When left out, a new VIP gets C(nat) and an existing VIP keeps its mode.
    type: str
    choices: [nat, l2dsr, ipip]
  health:
    description:
      - The health check of the VIP's backends. When left out, a new VIP gets none and an
        existing VIP keeps its check; C(kind=none) removes a check.
      - Sub-options left out take lbctl's defaults, as C(lbctl vip set-health) does.
    type: dict
    suboptions:
      kind:
        description:
          - C(tcp) connects; C(http) sends C(GET path) and expects C(http_status); C(udp) sends
            C(udp_payload) and expects any reply; C(none) checks nothing.
        type: str
        choices: [none, tcp, http, udp]
        required: true
      path:
        description: HTTP path of an C(http) check.
        type: str
        default: /
      http_status:
        description: HTTP status an C(http) check expects.
        type: int
        default: 200
      udp_payload:
        description: What a C(udp) check sends.
        type: str
        default: ping
      interval:
        description: Time between two probes of a backend (100ms..1h), for example C(2s).
        type: str
        default: 1s
      timeout:
        description: How long one probe may take (below the interval). Default C(500ms), at most half the interval.
        type: str
      rise:
        description: Good probes in a row that bring a down backend back (1..100).
        type: int
        default: 2
      fall:
        description: Failed probes in a row that take a backend out (1..100).
        type: int
        default: 3
      all_down:
        description: When every backend is down, C(fail-open) keeps them all, C(drop) drops new flows.
        type: str
        choices: [fail-open, drop]
        default: fail-open
  state:
    description: C(present) adds the VIP (or changes it to match); C(absent) removes it with its backends.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - xdplb.lb.lbctl
seealso:
  - module: xdplb.lb.xdplb_backend
'''

EXAMPLES = r'''
- name: A TCP VIP with an HTTP health check
  xdplb.lb.xdplb_vip:
    address: 10.0.0.10
    port: 80
    protocol: tcp
    health:
      kind: http
      path: /healthz
      interval: 2s
      fall: 2

- name: A UDP VIP in L2 DSR mode, new flows dropped when every backend is down
  xdplb.lb.xdplb_vip:
    address: 10.0.0.10
    port: 53
    protocol: udp
    mode: l2dsr
    health:
      kind: udp
      all_down: drop

- name: Switch an existing VIP to IPIP DSR for new flows (health check left as it is)
  xdplb.lb.xdplb_vip:
    address: 10.0.0.10
    port: 80
    protocol: tcp
    mode: ipip

- name: Remove a VIP, through lbd's TCP API
  xdplb.lb.xdplb_vip:
    address: 10.0.0.10
    port: 53
    protocol: udp
    state: absent
    addr: http://127.0.0.1:50051
'''

RETURN = r'''
vip:
  description: The VIP as lbd reports it after the task (C(lbctl --json vip list)); empty when absent.
  returned: success
  type: dict
  sample:
    address: 10.0.0.10
    port: 80
    protocol: tcp
    mode: nat
    id: 0
    backends: 2
    health: {kind: http, interval_ms: 2000, timeout_ms: 500, rise: 2, fall: 2, all_down: fail-open,
             http_path: /healthz, http_expect_status: 200}
commands:
  description: The lbctl command lines that changed (or in check mode, would change) lbd.
  returned: always
  type: list
  elements: str
  sample: ["lbctl vip add 10.0.0.10:80 --proto tcp --mode nat --health http:/healthz --health-interval 2s --fall 2"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xdplb.lb.plugins.module_utils.lbctl import Lbctl, argument_spec, config_view, duration_ms

HEALTH_SPEC = dict(
    kind=dict(type='str', required=True, choices=['none', 'tcp', 'http', 'udp']),
    path=dict(type='str', default='/'),
    http_status=dict(type='int', default=200),
    udp_payload=dict(type='str', default='ping'),
    interval=dict(type='str', default='1s'),
    timeout=dict(type='str'),
    rise=dict(type='int', default=2),
    fall=dict(type='int', default=3),
    all_down=dict(type='str', default='fail-open', choices=['fail-open', 'drop']),
)


def health_flags(h):
    """The ``--health ...`` flags of lbctl for the ``health`` option."""
    if h['kind'] == 'none':
        return ['--health', 'none']
    kind = 'http:' + h['path'] if h['kind'] == 'http' else h['kind']
    flags = ['--health', kind, '--health-interval', h['interval']]
    if h['timeout'] is not None:
        flags += ['--health-timeout', h['timeout']]
    flags += ['--rise', str(h['rise']), '--fall', str(h['fall']), '--all-down', h['all_down']]
    if h['kind'] == 'http':
        flags += ['--http-status', str(h['http_status'])]
    if h['kind'] == 'udp':
        flags += ['--udp-payload', h['udp_payload']]
    return flags


def health_view(h):
    """The ``health`` option as ``lbctl --json`` shows a check, or None when a value is one
    lbctl would reject (then lbctl is asked, and reports why)."""
    if h['kind'] == 'none':
        return {'kind': 'none'}
    interval = duration_ms(h['interval'])
    if interval is None:
        return None
    timeout = duration_ms(h['timeout']) if h['timeout'] is not None else min(500, interval // 2)
    if timeout is None:
        return None
    view = dict(kind=h['kind'], interval_ms=interval, timeout_ms=timeout, rise=h['rise'],
                fall=h['fall'], all_down=h['all_down'])
    if h['kind'] == 'http':
        view.update(http_path=h['path'], http_expect_status=h['http_status'])
    if h['kind'] == 'udp':
        view['udp_payload'] = h['udp_payload']
    return view


def same_health(current, wanted):
    if wanted is None:
        return False
    if wanted['kind'] == 'none':
        return (current or {}).get('kind', 'none') == 'none'
    return all((current or {}).get(k) == v for k, v in wanted.items())


def config_of(vip):
    """The configurable part of a VIP (no ids or counts): what diff mode shows."""
    return config_view(vip, ('address', 'port', 'protocol', 'mode', 'health'))


def find_vip(lbctl, address, port, protocol):
    wanted = (address, port, protocol)
    return lbctl.find(['vip', 'list'], 'vips',
                      lambda v: (v.get('address'), v.get('port'), v.get('protocol')) == wanted)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            address=dict(type='str', required=True),
            port=dict(type='int', required=True),
            protocol=dict(type='str', required=True, choices=['tcp', 'udp']),
            mode=dict(type='str', choices=['nat', 'l2dsr', 'ipip']),
            health=dict(type='dict', options=HEALTH_SPEC),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        supports_check_mode=True,
    )
    p = module.params
    lbctl = Lbctl(module)
    key = '%s:%d' % (p['address'], p['port'])
    vip_ref = [key, '--proto', p['protocol']]

    current = find_vip(lbctl, p['address'], p['port'], p['protocol'])
    before = config_of(current)

    if p['state'] == 'absent':
        if current is None:
            lbctl.exit(False, before, {}, vip={})
        lbctl.change(['vip', 'remove'] + vip_ref)
        lbctl.exit(True, before, {}, vip={})

    wanted_health = health_view(p['health']) if p['health'] else None
    if current is None:
        args = ['vip', 'add'] + vip_ref + ['--mode', p['mode'] or 'nat']
        if p['health'] and p['health']['kind'] != 'none':
            args += health_flags(p['health'])
        lbctl.change(args)
        predicted = dict(address=p['address'], port=p['port'], protocol=p['protocol'],
                         mode=p['mode'] or 'nat', health=wanted_health or {'kind': 'none'})
    else:
        predicted = dict(current)
        if p['mode'] and current.get('mode') != p['mode']:
            lbctl.change(['vip', 'set-mode'] + vip_ref + ['--mode', p['mode']])
            predicted['mode'] = p['mode']
        if p['health'] and not same_health(current.get('health'), wanted_health):
            lbctl.change(['vip', 'set-health'] + vip_ref + health_flags(p['health']))
            predicted['health'] = wanted_health or p['health']
    after = lbctl.after(current, predicted,
                        lambda: find_vip(lbctl, p['address'], p['port'], p['protocol']))
    lbctl.exit(bool(lbctl.commands), before, config_of(after), vip=after)


if __name__ == '__main__':
    main()
