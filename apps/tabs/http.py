"""How tabs call the BentoML APIs: JSON over HTTP, with the API's own reason when it refuses a request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

# Events a tab lets run at once when its API batches requests (news, images, the generator): Gradio runs one at a
# time by default, which would queue people one behind another in front of a server that decodes them together.
# The generator service batches 16 sequences by default (max_batch).
API_CONCURRENCY = 16


class ApiError(RuntimeError):
    pass


def post_json(url: str, body: Any, timeout: float = 30.0) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a 4xx carries the reason in its body
        reason = exc.read().decode(errors="replace")[:300]
        raise ApiError(f"the API refused the request ({exc.code}): {reason}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ApiError(f"the API at {url} did not answer: {exc}") from None
