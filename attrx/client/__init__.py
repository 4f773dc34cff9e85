"""The Python client of an attrx server: `Client` (sync) and `AsyncClient`, over httpx, no torch.

    from attrx.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as c:
        one = c.extract(title="Nike Men Navy Blue T-shirt", image="shirt.jpg")
        print(one.predictions["baseColour"].value, one.predictions["baseColour"].accepted)
        many = c.extract_many([{"id": "a1", "title": "..."}, {"id": "a2", "image": b"..."}])

- `extract(title=..., image=...)`: one product; the image is a path, bytes or a PIL image.
- `extract_many(products)`: a list of products (dicts or `Product`), split into calls of at most the
  server's own item limit and body size (read once from `GET /v1/model`), run with bounded
  concurrency; the answers come back in input order, one `BatchItemResult` each (a product the
  server refused carries its `error`, the others their `predictions`).
- 429 and 503 are retried with exponential backoff, waiting at least what `Retry-After` says, and so
  are connection failures; after `retries` tries the error is raised as `AttrxError`, as is any other
  error answer (its `reason`, `status`, `detail` and `request_id` from the problem details).
- Answers are the pydantic models the server itself answers with (`attrx.service.http.schemas`).
"""

from attrx.client.async_client import AsyncClient
from attrx.client.parts import AttrxError, Product, Retry
from attrx.client.sync_client import Client
from attrx.service.http.schemas import BatchItemResult, ExtractResponse, ModelInfo

__all__ = ["AsyncClient", "AttrxError", "BatchItemResult", "Client", "ExtractResponse", "ModelInfo", "Product",
           "Retry"]
