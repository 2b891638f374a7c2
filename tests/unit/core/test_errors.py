"""User errors are one class: what the CLI prints as one line, and still ValueErrors for pydantic and older callers."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from implicit_it.errors import ConfigError, DataFormatError, ImplicitItError, ModelSpecError, UserError


@pytest.mark.parametrize("error", [DataFormatError("data.jsonl", 3, "malformed JSON"), ConfigError("bad"), ModelSpecError("bad")])
def test_data_config_and_model_spec_errors_are_user_errors_and_value_errors(error):
    assert isinstance(error, UserError) and isinstance(error, ValueError) and isinstance(error, ImplicitItError)


def test_a_user_error_in_a_validator_names_the_field():
    def check(value: int) -> int:
        raise UserError(f"{value} is not allowed")

    class Model(BaseModel):
        n: Annotated[int, AfterValidator(check)]

    with pytest.raises(ValidationError, match=r"n\n.*7 is not allowed"):
        Model(n=7)
