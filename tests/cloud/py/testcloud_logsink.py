"""Receive Swift's syslog datagrams on 127.0.0.1 UDP and append them to a file.

Swift logs only to syslog; without /dev/log it would send UDP to port 514.
The test cloud points every Swift server (log_udp_host/log_udp_port) and the
proxy's access log (access_log_udp_host/port) here instead.

Usage: python testcloud_logsink.py PORT LOGFILE
"""

import re
import socket
import sys

PRIORITY = re.compile(rb'^<\d+>')


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', port))
    with open(path, 'ab', buffering=0) as out:
        while True:
            data, _ = sock.recvfrom(65536)
            out.write(PRIORITY.sub(b'', data.rstrip(b'\0\n')) + b'\n')


if __name__ == '__main__':
    main()
