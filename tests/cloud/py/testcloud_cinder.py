"""Cinder api + scheduler + volume + backup in ONE process, for the volsnap
test cloud.

Usage: python testcloud_cinder.py --config-file cinder.conf

This is the shape of Cinder's own functional tests: oslo.messaging runs with
`transport_url = fake:/` (in-process queues), so the four services must share
one process. One trap is fixed here: `cinder.service.Service.service_id` is a
class attribute, so with two RPC services in one process only the last one
created heartbeats with the right id and cinder-volume goes "down" after
`service_down_time`. We make report_state use each service's own id.
"""

from cinder import monkey_patch; monkey_patch.patch()  # noqa: E702,I100

import logging as python_logging  # noqa: E402
import sys  # noqa: E402

import os_brick  # noqa: E402
import os_brick.privileged  # noqa: E402

from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402
from oslo_service import service as oslo_service  # noqa: E402

from cinder.common import config  # noqa: E402
from cinder.common import constants  # noqa: E402
# Registers backup_max_operations (and backup_workers) as cinder-backup does.
from cinder.cmd import backup as _backup_cmd  # noqa: E402,F401
from cinder import coordination  # noqa: E402
from cinder import i18n  # noqa: E402
from cinder import privsep  # noqa: E402
from cinder import objects  # noqa: E402
from cinder import rpc  # noqa: E402
from cinder import service  # noqa: E402
from cinder import utils  # noqa: E402
from cinder import version  # noqa: E402

i18n.enable_lazy()
CONF = cfg.CONF
LOG = logging.getLogger('testcloud_cinder')

_report_state = service.Service.report_state


def _report_own_state(self):
    # report_state reads the class attribute Service.service_id before its
    # first yield to another green thread, so setting it here is enough.
    service.Service.service_id = self.origin_service_id
    return _report_state(self)


service.Service.report_state = _report_own_state

# cinder-backup asks os-brick for the host's connector properties, which runs
# privileged helpers through a privsep daemon started with "sudo
# privsep-helper". There is no sudo here and this process is root already:
# run the privileged functions in-process, as Cinder's own tests do.
for _ctx in (os_brick.privileged.default,
             os_brick.privileged.brick_privsep_hide_output,
             privsep.sys_admin_pctxt):
    _ctx.set_client_mode(False)


def main():
    objects.register_all()
    CONF(sys.argv[1:], project='cinder', version=version.version_string())
    config.set_middleware_defaults()
    logging.setup(CONF, 'cinder')
    python_logging.captureWarnings(True)
    os_brick.setup(CONF)

    coordination.COORDINATOR.start()
    rpc.init(CONF)

    launcher = oslo_service.ServiceLauncher(CONF, restart_method='mutate')
    for backend in filter(None, CONF.enabled_backends):
        launcher.launch_service(service.Service.create(
            host='%s@%s' % (CONF.host, backend),
            service_name=backend,
            binary=constants.VOLUME_BINARY,
            coordination=True))
    launcher.launch_service(service.Service.create(
        binary=constants.SCHEDULER_BINARY))
    # As cinder-backup's own main() does with backup_workers = 1.
    launcher.launch_service(service.Service.create(
        binary=constants.BACKUP_BINARY,
        coordination=True,
        service_name='backup',
        process_number=1,
        semaphore=utils.semaphore_factory(CONF.backup_max_operations, 1)))
    launcher.launch_service(service.WSGIService('osapi_volume'))
    LOG.info('testcloud cinder: api, scheduler, volume and backup started')
    launcher.wait()


if __name__ == '__main__':
    main()
