"""What the tests share, imported by name (`from support import images`):

    images     generated image trees that survive a JPEG round trip
    records    trees converted, records read back, folders compared, the real photos
    cli        a command's main(argv) run in this process, its output captured
    processes  scripts as real processes (a session of their own, killed by PID)

conftest.py holds only fixtures, built from these.
"""
