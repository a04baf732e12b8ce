"""Build Swift's account, container and object rings for one local device.

Same result as `swift-ring-builder X.builder create 8 1 1`, `add
r1z1-127.0.0.1:PORT/sdb1 1` and `rebalance` for each ring, in one Python
start instead of nine.

Usage: python testcloud_rings.py SWIFT_DIR ACCOUNT_PORT CONTAINER_PORT OBJECT_PORT
"""

import os
import sys

from swift.common.ring import RingBuilder


def main():
    swift_dir = sys.argv[1]
    ports = dict(zip(('account', 'container', 'object'),
                     (int(p) for p in sys.argv[2:5])))
    for name, port in ports.items():
        builder = RingBuilder(8, 1, 1)
        builder.add_dev({'id': 0, 'region': 1, 'zone': 1,
                         'ip': '127.0.0.1', 'port': port,
                         'device': 'sdb1', 'weight': 1})
        builder.rebalance()
        builder.save(os.path.join(swift_dir, name + '.builder'))
        builder.get_ring().save(os.path.join(swift_dir, name + '.ring.gz'))


if __name__ == '__main__':
    main()
