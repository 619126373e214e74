"""Errors the harness and its plugins raise to each other, and the message texts they share."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits 2, no traceback."""


class PluginImportError(UserError):
    """A user's module that exists but fails at import (raises, or calls sys.exit): that plugin alone
    is broken, so a run with other models goes on and gives this one's cells error rows."""


NEEDS_LABELS = ("needs labelled data (--data digits, mnist:DIR, imagefolder:DIR, cifar10:DIR, npz:FILE or a "
                "module's factory): training on synthetic data's random labels would only teach noise")


class NotApplicable(Exception):
    """Raise from apply/prepare/run when the technique does not fit this model (e.g. nothing to
    fuse, a net that cannot be split into stages): the cell becomes `skipped` with this reason."""

