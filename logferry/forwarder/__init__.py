"""The forwarder: the per-node daemon that reads container log files and ships them.

Data flows one way::

    discovery -> tail -> reader (formats, partials, fastpath) -> entries -> node spool
              -> sender (endpoints) -> aggregators -> ack -> spool commit -> positions

- ``discovery`` finds the files (glob + inotify + rescan, the links and kubelet's pods
  layout), ``pathguard`` refuses what is not a container's own log, ``metadata`` reads
  namespace/pod/container from the file name; ``podwatch`` keeps this node's pods from the
  API server and ``enrich`` builds each file's ``kubernetes`` map from both.
- ``multiline`` joins stack traces per file and stream before the spool, with the rule
  ``multiline_rules`` picks (tenant pipelines, pod annotation, config).
- ``tail`` reads one file in large chunks; ``reader`` turns its bytes into numbered records
  (``formats`` parses docker json-file and CRI lines, ``partials`` joins split lines,
  ``fastpath`` takes the common case in one loop); ``entries`` packs them into spool blocks.
- ``sender`` sends spool batches as CompressedPackedForward chunks and commits on ack;
  ``endpoints`` holds the aggregators (static + DNS), their health and the pick.
- ``positions`` (and ``positions_saver``) keep how far each file was read, trailing what the
  spool holds; ``parking`` (and ``parked_cli``) keep chunks the aggregators kept refusing.
- ``app`` wires it together, ``config`` is forwarder.yaml, ``metrics`` every metric it
  exports, ``cli`` the ``logferry forwarder`` command.
"""
