"""Credentials never reach logs or MLflow params: pipelines/redaction.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipelines.redaction import MASK, is_secret_name, redact, redact_mapping


def test_url_passwords_are_masked() -> None:
    text = "mlflow server --backend-store-uri postgresql://segflow:s3cr3t@127.0.0.1:5432/mlflow"
    assert redact(text) == text.replace("s3cr3t", MASK)
    plain = "http://127.0.0.1:5000/api and s3://bucket/key"
    assert redact(plain) == plain


def test_secret_assignments_are_masked() -> None:
    text = "AWS_SECRET_ACCESS_KEY=abc123 region=us-east-1 db_password: hunter2"
    assert redact(text) == f"AWS_SECRET_ACCESS_KEY={MASK} region=us-east-1 db_password: {MASK}"


def test_mappings_mask_secret_names_recursively() -> None:
    values = {
        "AWS_SECRET_ACCESS_KEY": "abc",
        "tracking": "postgresql://u:pw@host/db",
        "nested": {"api_token": "t", "epochs": 3},
        "empty_password": "",
    }
    assert redact_mapping(values) == {
        "AWS_SECRET_ACCESS_KEY": MASK,
        "tracking": f"postgresql://u:{MASK}@host/db",
        "nested": {"api_token": MASK, "epochs": 3},
        "empty_password": "",
    }
    assert is_secret_name("MINIO_ROOT_PASSWORD") and not is_secret_name("patch_size")


@given(
    user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    password=st.from_regex(r"[A-Za-z0-9_\-.~!$&'()*+,;=%]{1,30}", fullmatch=True),
    host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
)
def test_no_url_password_survives(user: str, password: str, host: str) -> None:
    cleaned = redact(f"connect to postgresql+asyncpg://{user}:{password}@{host}/db now")
    assert f":{password}@" not in cleaned and f"{user}:{MASK}@{host}" in cleaned
