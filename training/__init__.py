"""``implicit_it.training``: the paper's variants (instruction, response, single-task tuning).

Built on the core's masked encoding (:func:`implicit_it.formats.encode_example`): loss on
response + EOS only, with the prompt exactly as the generator will later see it.
"""
