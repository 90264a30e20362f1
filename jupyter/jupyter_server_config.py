# lmdm's Jupyter server configuration: TCP_NODELAY on kernel websockets (see lmdm/jupyter_nodelay.py), so the
# live microphone's small audio messages are not held back by Nagle's algorithm.
c = get_config()  # noqa: F821
c.ServerApp.jpserver_extensions = {"lmdm.jupyter_nodelay": True}
