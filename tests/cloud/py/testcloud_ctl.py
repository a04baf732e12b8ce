"""API-side helpers for the volsnap test cloud (run with the venv's python).

  wait-keystone SECONDS          a token is issued to the bootstrap admin
  bootstrap RUN_DIR              catalog, project/user "backup", service users,
                                 application credential; writes RUN_DIR/env.sh
                                 and RUN_DIR/clouds.yaml
  wait-swift SECONDS             the backup user creates and deletes a container
  wait-cinder SECONDS            cinder-volume and cinder-scheduler are up, the
                                 pool is listed, and the backup user lists volumes
  ready SECONDS                  the three waits above, one after the other
  attach VOLUME_ID DEVICE        attachment create (no instance) + os-complete;
                                 prints the attachment id
  detach ATTACHMENT_ID           attachment delete

Everything but bootstrap reads the environment that up.sh writes in
run/env.sh (OS_* and VOLSNAP_TESTCLOUD_*). Every wait has a deadline.
"""

import json
import os
import socket
import sys
import time
import uuid

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity import v3
from keystoneauth1 import session as ks_session

REGION = 'RegionOne'
INTERFACES = ('public', 'internal', 'admin')
ATTACH_MICROVERSION = 'volume 3.44'


def env(name):
    try:
        return os.environ[name]
    except KeyError:
        sys.exit('testcloud_ctl: %s is not set (source tests/cloud/run/env.sh)'
                 % name)


def admin_session(timeout=30):
    auth = v3.Password(auth_url=env('VOLSNAP_TESTCLOUD_KEYSTONE_URL') + '/v3',
                       username='admin', password=env(
                           'VOLSNAP_TESTCLOUD_ADMIN_PASSWORD'),
                       user_domain_id='default', project_name='admin',
                       project_domain_id='default')
    return ks_session.Session(auth=auth, timeout=timeout)


def appcred_session(timeout=30):
    auth = v3.ApplicationCredential(
        auth_url=env('OS_AUTH_URL'),
        application_credential_id=env('OS_APPLICATION_CREDENTIAL_ID'),
        application_credential_secret=env('OS_APPLICATION_CREDENTIAL_SECRET'))
    return ks_session.Session(auth=auth, timeout=timeout)


def until(deadline_s, what, probe):
    """Call probe(timeout) until it returns a true value or the deadline
    passes; timeout (for each HTTP request) is what is left, at most 10 s."""
    deadline = time.monotonic() + deadline_s
    delay, last = 0.1, None
    while True:
        try:
            result = probe(min(10.0, max(1.0, deadline - time.monotonic())))
            if result:
                return result
            last = 'not yet'
        except (ks_exc.ClientException, OSError, ValueError, KeyError) as e:
            last = '%s: %s' % (type(e).__name__, e)
        if time.monotonic() + delay > deadline:
            sys.exit('testcloud_ctl: %s not ready after %ss (last: %s)'
                     % (what, deadline_s, last))
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


# -- readiness -------------------------------------------------------------

def wait_keystone(seconds):
    until(float(seconds), 'keystone (admin token)',
          lambda timeout: admin_session(timeout).get_token())


def wait_swift(seconds):
    def probe(timeout):
        sess = appcred_session(timeout)
        url = sess.get_endpoint(service_type='object-store',
                                interface='public', region_name=REGION)
        name = 'testcloud-ready-%s' % uuid.uuid4().hex[:8]
        sess.put('%s/%s' % (url, name))
        sess.delete('%s/%s' % (url, name))
        return True
    until(float(seconds), 'swift (container create/delete)', probe)


def wait_cinder(seconds):
    def probe(timeout):
        sess = admin_session(timeout)
        url = sess.get_endpoint(service_type='block-storage',
                                interface='public', region_name=REGION)
        services = sess.get(url + '/os-services').json()['services']
        up = {s['binary'] for s in services
              if s['state'] == 'up' and s['status'] == 'enabled'}
        if not {'cinder-volume', 'cinder-scheduler'} <= up:
            return False
        pools = sess.get(url + '/scheduler-stats/get_pools').json()['pools']
        if not pools:
            return False
        user = appcred_session(timeout)
        url = user.get_endpoint(service_type='block-storage',
                                interface='public', region_name=REGION)
        user.get(url + '/volumes')
        return True
    until(float(seconds), 'cinder (services up, pool listed)', probe)


# -- bootstrap -------------------------------------------------------------

class Identity:
    def __init__(self, sess, url):
        self.sess, self.url = sess, url

    def get(self, path, **params):
        return self.sess.get(self.url + path, params=params).json()

    def post(self, path, body):
        return self.sess.post(self.url + path, json=body).json()

    def put(self, path):
        self.sess.put(self.url + path)

    def find(self, collection, name, **params):
        items = self.get('/' + collection, name=name, **params)[collection]
        return items[0] if items else None

    def ensure(self, collection, name, body, **params):
        found = self.find(collection, name, **params)
        if found:
            return found
        single = collection[:-1]
        return self.post('/' + collection, {single: body})[single]

    def ensure_user(self, name, password, project):
        user = self.ensure('users', name,
                           {'name': name, 'password': password,
                            'domain_id': 'default',
                            'default_project_id': project['id']},
                           domain_id='default')
        return user


def bootstrap(run_dir):
    ks_url = env('VOLSNAP_TESTCLOUD_KEYSTONE_URL')
    swift_url = env('VOLSNAP_TESTCLOUD_SWIFT_URL')
    cinder_url = env('VOLSNAP_TESTCLOUD_CINDER_URL')
    admin_password = env('VOLSNAP_TESTCLOUD_ADMIN_PASSWORD')
    backup_password = env('VOLSNAP_TESTCLOUD_BACKUP_PASSWORD')
    service_password = env('VOLSNAP_TESTCLOUD_SERVICE_PASSWORD')
    idn = Identity(admin_session(), ks_url + '/v3')

    catalog = [
        ('swift', 'object-store', swift_url + '/v1/AUTH_$(project_id)s'),
        ('cinder', 'block-storage', cinder_url + '/v3/$(project_id)s'),
        ('cinderv3', 'volumev3', cinder_url + '/v3/$(project_id)s'),
    ]
    for name, stype, url in catalog:
        svc = idn.ensure('services', name, {'name': name, 'type': stype})
        have = {e['interface'] for e in idn.get(
            '/endpoints', service_id=svc['id'])['endpoints']}
        for interface in INTERFACES:
            if interface not in have:
                idn.post('/endpoints', {'endpoint': {
                    'service_id': svc['id'], 'interface': interface,
                    'region_id': REGION, 'url': url}})

    roles = {r['name']: r for r in idn.get('/roles')['roles']}
    for name in ('member', 'service'):
        if name not in roles:
            roles[name] = idn.post('/roles', {'role': {'name': name}})['role']

    service = idn.ensure('projects', 'service',
                         {'name': 'service', 'domain_id': 'default'},
                         domain_id='default')
    for name in ('swift', 'cinder'):
        user = idn.ensure_user(name, service_password, service)
        for role in ('admin', 'service'):
            idn.put('/projects/%s/users/%s/roles/%s'
                    % (service['id'], user['id'], roles[role]['id']))

    backup = idn.ensure('projects', 'backup',
                        {'name': 'backup', 'domain_id': 'default',
                         'description': 'volsnap test project'},
                        domain_id='default')
    user = idn.ensure_user('backup', backup_password, backup)
    idn.put('/projects/%s/users/%s/roles/%s'
            % (backup['id'], user['id'], roles['member']['id']))

    # An application credential is created by its own user.
    own = Identity(ks_session.Session(auth=v3.Password(
        auth_url=ks_url + '/v3', username='backup', password=backup_password,
        user_domain_id='default', project_id=backup['id']), timeout=30),
        ks_url + '/v3')
    appcred = own.post('/users/%s/application_credentials' % user['id'], {
        'application_credential': {
            'name': 'volsnap-test-%s' % uuid.uuid4().hex[:8],
            'description': 'volsnap test cloud'}})['application_credential']

    values = {
        'OS_AUTH_URL': ks_url + '/v3',
        'OS_AUTH_TYPE': 'v3applicationcredential',
        'OS_APPLICATION_CREDENTIAL_ID': appcred['id'],
        'OS_APPLICATION_CREDENTIAL_SECRET': appcred['secret'],
        'OS_REGION_NAME': REGION,
        'OS_INTERFACE': 'public',
        'OS_IDENTITY_API_VERSION': '3',
        'VOLSNAP_TESTCLOUD_BACKUP_USER_ID': user['id'],
        'VOLSNAP_TESTCLOUD_PROJECT_ID': backup['id'],
        'VOLSNAP_TESTCLOUD_SWIFT_ENDPOINT':
            '%s/v1/AUTH_%s' % (swift_url, backup['id']),
        'VOLSNAP_TESTCLOUD_CINDER_ENDPOINT':
            '%s/v3/%s' % (cinder_url, backup['id']),
        'VOLSNAP_TESTCLOUD_ADMIN_PASSWORD': admin_password,
        'VOLSNAP_TESTCLOUD_BACKUP_PASSWORD': backup_password,
    }
    write_env(run_dir, values)
    write_clouds(run_dir, values, backup_password, admin_password)


def shell_quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


def write_env(run_dir, values):
    lines = ['# Written by tests/cloud/up.sh: source it to talk to the test '
             'cloud as the non-admin user "backup"',
             '# (application credential). Regenerated on every fresh start.']
    for key in sorted(k for k in os.environ if k.startswith('VOLSNAP_TESTCLOUD_')
                      and k not in values
                      and not k.endswith('SERVICE_PASSWORD')):
        values[key] = os.environ[key]
    order = sorted(values, key=lambda k: (not k.startswith('OS_'), k))
    lines += ['export %s=%s' % (k, shell_quote(values[k])) for k in order]
    write_private(os.path.join(run_dir, 'env.sh'), '\n'.join(lines) + '\n')


def write_clouds(run_dir, values, backup_password, admin_password):
    auth_url = values['OS_AUTH_URL']
    clouds = {'clouds': {
        'volsnap-test': {
            'auth_type': 'v3applicationcredential',
            'auth': {
                'auth_url': auth_url,
                'application_credential_id':
                    values['OS_APPLICATION_CREDENTIAL_ID'],
                'application_credential_secret':
                    values['OS_APPLICATION_CREDENTIAL_SECRET'],
            },
            'region_name': REGION, 'interface': 'public',
            'identity_api_version': 3,
        },
        'volsnap-test-password': {
            'auth_type': 'password',
            'auth': {
                'auth_url': auth_url, 'username': 'backup',
                'password': backup_password, 'project_name': 'backup',
                'user_domain_name': 'Default',
                'project_domain_name': 'Default',
            },
            'region_name': REGION, 'interface': 'public',
            'identity_api_version': 3,
        },
        'volsnap-admin': {
            'auth_type': 'password',
            'auth': {
                'auth_url': auth_url, 'username': 'admin',
                'password': admin_password, 'project_name': 'admin',
                'user_domain_name': 'Default',
                'project_domain_name': 'Default',
            },
            'region_name': REGION, 'interface': 'public',
            'identity_api_version': 3,
        },
    }}
    # JSON is YAML; no PyYAML dependency needed to write it.
    write_private(os.path.join(run_dir, 'clouds.yaml'),
                  json.dumps(clouds, indent=2) + '\n')


def write_private(path, text):
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


# -- attachments -----------------------------------------------------------

def cinder_user():
    sess = appcred_session()
    url = sess.get_endpoint(service_type='block-storage', interface='public',
                            region_name=REGION)
    return sess, url


def attach(volume_id, device):
    sess, url = cinder_user()
    headers = {'OpenStack-API-Version': ATTACH_MICROVERSION}
    connector = {'platform': 'x86_64', 'os_type': 'linux',
                 'host': socket.gethostname(), 'ip': '127.0.0.1',
                 'initiator': 'iqn.2024-01.org.volsnap:testcloud',
                 'multipath': False, 'do_local_attach': False,
                 'mountpoint': device}
    att = sess.post(url + '/attachments', headers=headers, json={
        'attachment': {'volume_uuid': volume_id,
                       'connector': connector}}).json()['attachment']
    try:
        sess.post('%s/attachments/%s/action' % (url, att['id']),
                  headers=headers, json={'os-complete': None})
    except ks_exc.ClientException:
        sess.delete('%s/attachments/%s' % (url, att['id']), headers=headers)
        raise
    print(att['id'])


def detach(attachment_id):
    sess, url = cinder_user()
    try:
        sess.delete('%s/attachments/%s' % (url, attachment_id),
                    headers={'OpenStack-API-Version': ATTACH_MICROVERSION})
    except ks_exc.NotFound:
        print('testcloud_ctl: attachment %s already gone' % attachment_id,
              file=sys.stderr)


def ready(seconds):
    wait_keystone(seconds)
    wait_swift(seconds)
    wait_cinder(seconds)


COMMANDS = {
    'ready': ready,
    'wait-keystone': wait_keystone,
    'wait-swift': wait_swift,
    'wait-cinder': wait_cinder,
    'bootstrap': bootstrap,
    'attach': attach,
    'detach': detach,
}

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except ks_exc.HttpError as e:
        body = e.response.text if e.response is not None else ''
        sys.exit('testcloud_ctl %s: %s %s: HTTP %s %s' % (
            sys.argv[1], e.method, e.url, e.http_status, body or e.message))
