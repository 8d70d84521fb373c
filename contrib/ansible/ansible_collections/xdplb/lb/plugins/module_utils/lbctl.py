# -*- coding: utf-8 -*-
# Copyright: xdplb contributors
# Apache License 2.0 (see the LICENSE of the xdplb repository)
"""Runs ``lbctl --json`` for the xdplb modules.

One place for the options every module shares (where lbctl is, how it reaches lbd), for
reading lbd's state as JSON, and for changes: those are recorded as command lines and only
run outside check mode. A failing lbctl call fails the task with lbctl's own error text.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re

try:
    from shlex import quote as _quote
except ImportError:  # pragma: no cover - Python 2 is not supported by lbctl hosts anyway
    from pipes import quote as _quote

# The options of ``doc_fragments/lbctl.py``, as an argument_spec.
LBCTL_ARGUMENT_SPEC = dict(
    lbctl_path=dict(type='path'),
    socket=dict(type='path'),
    addr=dict(type='str'),
    timeout=dict(type='str', default='5s'),
)

_DURATION = re.compile(r'^([0-9]+)(ms|s|m|)$')


def argument_spec(**own):
    """The shared lbctl options plus a module's own."""
    spec = dict(LBCTL_ARGUMENT_SPEC)
    spec.update(own)
    return spec


def duration_ms(text):
    """Milliseconds of a duration as lbctl spells it (``500ms``, ``2s``, ``1m``, ``3`` = 3 s),
    or None when lbctl would reject it (lbctl then reports why)."""
    if text is None:
        return None
    m = _DURATION.match(str(text).strip())
    if not m:
        return None
    n = int(m.group(1))
    factor = {'ms': 1, 's': 1000, '': 1000, 'm': 60000}[m.group(2)]
    return n * factor if n > 0 else None


def cidr_text(text):
    """``192.0.2.7`` -> ``192.0.2.7/32``, as lbd lists a prefix; None for what lbctl would
    refuse (host bits set, not IPv4)."""
    try:
        return str(ipaddress.IPv4Network(text if '/' in text else text + '/32', strict=True))
    except ValueError:
        return None


def config_view(item, keys):
    """The configurable part of what lbd listed (``keys`` of it, no ids or counters): what
    diff mode shows; ``{}`` for nothing."""
    if not item:
        return {}
    return dict((k, item.get(k)) for k in keys)


class Lbctl(object):
    """lbctl as the modules use it: ``query`` reads, ``change`` writes (not in check mode)."""

    def __init__(self, module):
        self.module = module
        p = module.params
        path = p.get('lbctl_path')
        if not path:
            path = module.get_bin_path('lbctl', required=True, opt_dirs=['/usr/local/bin', '/usr/bin'])
        self.base = [path, '--json']
        if p.get('socket'):
            self.base += ['--socket', p['socket']]
        if p.get('addr'):
            self.base += ['--addr', p['addr']]
        if p.get('timeout'):
            self.base += ['--timeout', p['timeout']]
        # Every changing command, as a shell-quoted line without the connection options.
        self.commands = []

    def _run(self, args, data=None):
        cmd = self.base + list(args)
        rc, out, err = self.module.run_command(cmd, data=data, binary_data=data is not None)
        if rc != 0:
            msg = err.strip() or out.strip() or 'lbctl exited with status %d' % rc
            self.module.fail_json(msg=msg, rc=rc, cmd=cmd, stdout=out, stderr=err,
                                  commands=self.commands)
        out = out.strip()
        if not out:
            return {}
        try:
            return json.loads(out)
        except ValueError as e:
            self.module.fail_json(msg='lbctl printed no JSON: %s' % e, cmd=cmd, stdout=out, stderr=err)

    def query(self, args):
        """Runs a reading command (also in check mode) and returns its JSON document."""
        return self._run(args)

    def change(self, args, data=None):
        """Records a changing command and runs it unless in check mode; returns its JSON
        document (``{}`` in check mode). ``data`` goes to lbctl's standard input."""
        self.commands.append(self.show(args))
        if self.module.check_mode:
            return {}
        return self._run(args, data=data)

    def find(self, args, field, matches):
        """The first entry of ``field`` in the JSON of the reading command ``args`` for which
        ``matches(entry)`` holds, or None."""
        for item in self.query(args).get(field, []):
            if matches(item):
                return item
        return None

    def after(self, current, predicted, reread):
        """What lbd holds after the task: ``reread()`` (or ``{}``) when a command ran, what
        the commands would make of it (``predicted``) in check mode, else ``current``."""
        if self.commands and not self.module.check_mode:
            return reread() or {}
        return predicted if self.commands else (current or {})

    @staticmethod
    def show(args):
        return ' '.join(_quote(a) for a in ['lbctl'] + list(args))

    def exit(self, changed, before, after, **extra):
        """Ends the task: ``changed``, ``commands``, and a before/after diff in diff mode."""
        result = dict(changed=changed, commands=self.commands, **extra)
        if self.module._diff:
            result['diff'] = dict(before=before, after=after)
        self.module.exit_json(**result)
