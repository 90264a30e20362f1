# lmdm's Jupyter server configuration: TCP_NODELAY on kernel websockets (see jupyter/lmdm_nodelay.py), so the
# live microphone's small audio messages are not held back by Nagle's algorithm.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lmdm_nodelay.py lives beside this file
c = get_config()  # noqa: F821
c.ServerApp.jpserver_extensions = {"lmdm_nodelay": True}
