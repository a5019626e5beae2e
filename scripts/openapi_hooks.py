"""Schemathesis hooks of scripts/check-openapi.

The run's API key is the credential of every request: an operation that revokes it would turn
the rest of the run into 401s. `DELETE /v1/api-keys/{id}` is still tested (on the keys the run
creates and on ids that do not exist); only its own key is swapped for an unknown id.
"""

import os
import uuid

import schemathesis

OWN_KEY_ID = os.environ["IACE_OPENAPI_KEY_ID"]


@schemathesis.hook
def before_call(context, case, kwargs):
    if (
        case.operation.method.upper() == "DELETE"
        and case.operation.path == "/v1/api-keys/{id}"
        and str((case.path_parameters or {}).get("id", "")).lower() == OWN_KEY_ID
    ):
        case.path_parameters["id"] = str(uuid.uuid4())
