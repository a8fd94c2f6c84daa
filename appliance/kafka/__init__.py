"""Pure Kafka protocol handling: frames, headers, the codec on kio, version capping.

Nothing here touches a socket, a clock or a thread. Payloads are decoded only
for the API keys whose contents the proxy needs (topics, acks, error codes);
every other frame is forwarded as the bytes it arrived as.
"""
