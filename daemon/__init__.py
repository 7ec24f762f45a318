"""The daemon that runs inside every bot container: restores code and state, mirrors state and logs.

It never imports ``actors`` (it ships alone into the images); ``actors`` may use ``daemon.layout``,
``daemon.storage`` and the generic actor kit (``daemon.supervisor``, ``daemon.clock``).
"""
