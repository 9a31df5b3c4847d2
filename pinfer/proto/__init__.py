"""pinfer's wire protocol (package ``pinfer.v1``): the ``.proto`` sources and their generated stubs.

Regenerate the stubs with ``python -m pinfer.proto.build`` after editing a ``.proto`` file; the
generated ``*_pb2.py`` / ``*_pb2_grpc.py`` modules are committed so that nodes need no protoc.
"""
