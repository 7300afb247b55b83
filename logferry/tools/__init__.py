"""Tools beside the daemons: ``verify`` (proof of delivery; ``verify_inputs``,
``verify_options``, ``verify_store``) and ``loadgen`` (realistic container log files;
``loadgen_content``, ``loadgen_formats``)."""
