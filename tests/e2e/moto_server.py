"""`moto_server` with its DynamoDB backend's calls made one at a time.

moto (5.2) runs requests on threads, and its DynamoDB transactions are not isolated from
other requests: TransactWriteItems deep-copies every table it touches before it starts and,
when the transaction is cancelled, puts the copies back — undoing whatever other clients wrote
to those tables meanwhile — and the copy itself can fail with HTTP 500 when another request
changes the table during it. Amazon DynamoDB does neither. Several Outbox nodes write one
table concurrently (records, the change feed, the JMAP store), so the tests run moto with
DynamoDB calls serialized, which is what makes it behave like DynamoDB here. SQS and S3 are
untouched (SQS long polls must stay concurrent).

Usage is moto_server's: python tests/e2e/moto_server.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_lock = threading.RLock()


def _serialized(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with _lock:
            return method(*args, **kwargs)

    return call


for _name, _value in list(vars(DynamoDBBackend).items()):
    if callable(_value) and not _name.startswith("_"):
        setattr(DynamoDBBackend, _name, _serialized(_value))

if __name__ == "__main__":
    sys.exit(main())
