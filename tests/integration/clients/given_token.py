"""An unmodified librdkafka client (confluent-kafka) that presents a token it is given, not one it fetches.

Usage: given_token.py BOOTSTRAP TOKEN [--timeout S]

For what a copied or leftover token is worth at the appliance: OAUTHBEARER with
an `oauth_cb` that returns TOKEN, then a metadata request. Prints a JSON
summary: "metadata" true if the request was answered, "client_errors" with the
client's own errors (authentication, connection).
"""

import argparse
import json
import time

import jwt
from confluent_kafka.admin import AdminClient
from confluent_kafka import KafkaException

p = argparse.ArgumentParser()
p.add_argument("bootstrap")
p.add_argument("token")
p.add_argument("--timeout", type=float, default=8)
args = p.parse_args()

claims = jwt.decode(args.token, options={"verify_signature": False})
summary = {"metadata": False, "client_errors": []}
admin = AdminClient({
    "bootstrap.servers": args.bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
    # librdkafka will not send a token it believes expired: it is told a later lifetime, so that the appliance,
    # which reads exp from the token itself, is what decides.
    "oauth_cb": lambda _config: (args.token, max(float(claims["exp"]), time.time() + 60)), "socket.timeout.ms": 5000,
    "error_cb": lambda e: summary["client_errors"].append(str(e))})
try:
    admin.list_topics(timeout=args.timeout)
    summary["metadata"] = True
except KafkaException as e:
    summary["client_errors"].append(str(e))
summary["at"] = time.time()
print(json.dumps(summary))
