"""The command-line programs: each module's ``main(argv)`` is a console script of the wheel
(``sedd-generate``, ``sedd-eval``, ``sedd-convert``, ``sedd-preprocess``; ``sedd-pretrain`` is
:func:`sedd_megatron.training.pretrain.main`) and is run by the thin script of the same job in
``tools/`` of a checkout. They sit above every other package: nothing in the library imports them.
"""
