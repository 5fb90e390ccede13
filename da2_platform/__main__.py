from da2_platform.cli.main import entrypoint

entrypoint()
