"""Pairs for the ranking task: each instruction's own response first, the next instruction's second (stripped, as the
ranking source strips them)."""


def pair_with_next(dataset):
    outputs = [str(o).strip() for o in dataset["output"]]

    def add(doc, i):
        return {"instruction": doc["instruction"].strip(), "choices": [outputs[i], outputs[(i + 1) % len(outputs)]]}

    return dataset.map(add, with_indices=True)
