"""Keystone's WSGI application for gunicorn, in the volsnap test cloud.

gunicorn imports this module with its own command line still in sys.argv;
oslo.config parses sys.argv when Keystone initialises and would choke on
gunicorn's flags, so the arguments are trimmed first. The configuration file
comes from OS_KEYSTONE_CONFIG_FILES (set by up.sh).
"""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401
