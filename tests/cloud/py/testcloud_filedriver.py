"""A file-backed Cinder volume driver for the volsnap test cloud.

There is no LVM here (no device-mapper), so volumes are plain files:

  <volumes_dir>/volume-<id>.img     sparse raw file, the volume
  <volumes_dir>/snapshot-<id>.img   copy of the volume taken by create_snapshot

A test attaches volume-<id>.img itself with losetup (tests/cloud/attach.sh).

Fault knobs, read from files in <volumes_dir> when a snapshot is created:

  snapshot-delay      seconds (float) to sleep before copying: the snapshot
                      stays "creating" that long. Left in place until removed.
  snapshot-fail-next  if present, the next snapshot fails (status "error")
                      and the file is removed.

and when cinder-backup attaches a snapshot to back it up (the backup path;
backup_use_temp_snapshot = true makes cinder-backup read the snapshot file
through os-brick's local connector):

  backup-delay        seconds (float) to sleep before handing the snapshot
                      over: the backup stays "creating" that long (keep it
                      under rpc_response_timeout, 60 s). Stays until removed.
  backup-fail-next    if present, the next backup fails (status "error",
                      its snapshot back to "available") and the file is
                      removed.

Loaded by cinder.conf: volume_driver = testcloud_filedriver.FileDriver,
with tests/cloud/py on PYTHONPATH.
"""

import os
import subprocess
import time

from oslo_config import cfg
from oslo_log import log as logging

from cinder import exception
from cinder.volume import driver

LOG = logging.getLogger(__name__)

file_opts = [
    cfg.StrOpt('testcloud_volumes_dir',
               help='Directory holding volume-<id>.img, snapshot-<id>.img '
                    'and the fault knob files.'),
]
cfg.CONF.register_opts(file_opts, group='backend_defaults')

GiB = 1024 ** 3


class FileDriver(driver.VolumeDriver):
    VERSION = '1.0.0'
    CI_WIKI_NAME = 'volsnap_testcloud'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'file')

    # -- paths -------------------------------------------------------------
    @property
    def _dir(self):
        return self.configuration.testcloud_volumes_dir

    def _volume_path(self, volume):
        return os.path.join(self._dir, 'volume-%s.img' % volume.id)

    def _snapshot_path(self, snapshot):
        return os.path.join(self._dir, 'snapshot-%s.img' % snapshot.id)

    def local_path(self, volume):
        return self._volume_path(volume)

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _copy(src, dst):
        subprocess.run(['cp', '--reflink=auto', '--sparse=always', src, dst],
                       check=True)

    @staticmethod
    def _grow(path, size_gib):
        if os.path.getsize(path) < size_gib * GiB:
            os.truncate(path, size_gib * GiB)

    @staticmethod
    def _remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _knob(self, name):
        return os.path.join(self._dir, name)

    # -- setup and stats ---------------------------------------------------
    def do_setup(self, context):
        if not self._dir:
            raise exception.InvalidConfigurationValue(
                option='testcloud_volumes_dir', value=self._dir)
        os.makedirs(self._dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.path.isdir(self._dir):
            raise exception.VolumeBackendAPIException(
                data='volumes dir %s missing' % self._dir)

    def _update_volume_stats(self):
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'volsnap',
            'driver_version': self.VERSION,
            'storage_protocol': 'file',
            'total_capacity_gb': 'infinite',
            'free_capacity_gb': 'infinite',
            'reserved_percentage': 0,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'max_over_subscription_ratio': 1000.0,
            'multiattach': False,
        }

    # -- volumes -----------------------------------------------------------
    def create_volume(self, volume):
        path = self._volume_path(volume)
        with open(path, 'wb'):
            pass
        os.truncate(path, volume.size * GiB)

    def delete_volume(self, volume):
        self._remove(self._volume_path(volume))

    def extend_volume(self, volume, new_size):
        self._grow(self._volume_path(volume), new_size)

    def create_cloned_volume(self, volume, src_vref):
        path = self._volume_path(volume)
        self._copy(self._volume_path(src_vref), path)
        self._grow(path, volume.size)

    # -- snapshots ---------------------------------------------------------
    def create_snapshot(self, snapshot):
        delay_file = self._knob('snapshot-delay')
        if os.path.exists(delay_file):
            with open(delay_file) as f:
                delay = float(f.read().strip() or 0)
            LOG.info('snapshot-delay knob: sleeping %.3fs before snapshot %s',
                     delay, snapshot.id)
            time.sleep(delay)
        fail_file = self._knob('snapshot-fail-next')
        if os.path.exists(fail_file):
            self._remove(fail_file)
            LOG.info('snapshot-fail-next knob: failing snapshot %s',
                     snapshot.id)
            raise exception.VolumeBackendAPIException(
                data='snapshot-fail-next knob was set')
        self._copy(self._volume_path(snapshot.volume),
                   self._snapshot_path(snapshot))

    def delete_snapshot(self, snapshot):
        self._remove(self._snapshot_path(snapshot))

    def create_volume_from_snapshot(self, volume, snapshot):
        path = self._volume_path(volume)
        self._copy(self._snapshot_path(snapshot), path)
        self._grow(path, volume.size)

    def revert_to_snapshot(self, context, volume, snapshot):
        self._copy(self._snapshot_path(snapshot), self._volume_path(volume))
        self._grow(self._volume_path(volume), volume.size)

    # -- export and attach: the test attaches the file itself --------------
    def ensure_export(self, context, volume):
        pass

    def create_export(self, context, volume, connector):
        pass

    def remove_export(self, context, volume):
        pass

    def create_export_snapshot(self, context, snapshot, connector):
        pass

    def remove_export_snapshot(self, context, snapshot):
        pass

    def initialize_connection(self, volume, connector, **kwargs):
        return {'driver_volume_type': 'local',
                'data': {'device_path': self._volume_path(volume)}}

    def initialize_connection_snapshot(self, snapshot, connector, **kwargs):
        # Only cinder-backup attaches a snapshot: this is the backup path.
        delay_file = self._knob('backup-delay')
        if os.path.exists(delay_file):
            with open(delay_file) as f:
                delay = float(f.read().strip() or 0)
            LOG.info('backup-delay knob: sleeping %.3fs before backing up '
                     'snapshot %s', delay, snapshot.id)
            time.sleep(delay)
        fail_file = self._knob('backup-fail-next')
        if os.path.exists(fail_file):
            self._remove(fail_file)
            LOG.info('backup-fail-next knob: failing the backup of snapshot '
                     '%s', snapshot.id)
            raise exception.VolumeBackendAPIException(
                data='backup-fail-next knob was set')
        return {'driver_volume_type': 'local',
                'data': {'device_path': self._snapshot_path(snapshot)}}

    def terminate_connection(self, volume, connector, **kwargs):
        # cinder-backup restores by open(path, 'wb'), which truncates a file
        # (a block device has its size), and skips zero blocks of a new
        # volume: give the file back the volume's size.
        path = self._volume_path(volume)
        if os.path.exists(path):
            self._grow(path, volume.size)

    def terminate_connection_snapshot(self, snapshot, connector, **kwargs):
        pass
