"""Every query the application makes; nothing else builds SQL (ruff's banned-api rule, in
pyproject.toml, keeps it so). Functions take an open session and leave the transaction to the
caller, so a caller can make several of them one atomic step.

Three seams, each with its own callers:
- `requests`: reading and managing requests (the API's routes);
- `intake` and `work`: storing a request's rows, the work loop's claims and records, sweeps,
  finishing a request (the pipeline and the dispatchers);
- `outbox`: the webhook outbox (the deliverer, and the routes that show or redeliver).
"""

from imgcrunch.repository.intake import (
    NewRequest,
    create_request,
    fail_request,
    ingest_rows,
    is_ingested,
)
from imgcrunch.repository.outbox import (
    NewEvent,
    delivery_attempts,
    latest_delivery,
    lease_due_deliveries,
    record_delivery_attempt,
    redeliver,
    seconds_until_delivery_due,
)
from imgcrunch.repository.requests import (
    ImageRow,
    ProductOutcome,
    cancel_request,
    count_active_requests,
    delete_request,
    failed_images,
    get_request,
    kept_images,
    list_requests,
    ping,
    product_outcomes,
    request_images,
    requests_by_status,
    retry_failed_images,
    unfinished_image_count,
    unfinished_request_ids,
)
from imgcrunch.repository.work import (
    Batch,
    Claim,
    ClaimedImage,
    ImageResult,
    claim_next_batch,
    complete_unfinished_request_ids,
    finish_request,
    is_complete,
    record_results,
    release_claims,
    release_stale_claims,
    unclaimed_image_count,
    uningested_request_ids,
)

__all__ = [
    "Batch",
    "Claim",
    "ClaimedImage",
    "ImageResult",
    "ImageRow",
    "NewEvent",
    "NewRequest",
    "ProductOutcome",
    "cancel_request",
    "claim_next_batch",
    "complete_unfinished_request_ids",
    "count_active_requests",
    "create_request",
    "delete_request",
    "delivery_attempts",
    "fail_request",
    "failed_images",
    "finish_request",
    "get_request",
    "ingest_rows",
    "is_complete",
    "is_ingested",
    "kept_images",
    "latest_delivery",
    "lease_due_deliveries",
    "list_requests",
    "ping",
    "product_outcomes",
    "record_delivery_attempt",
    "record_results",
    "redeliver",
    "release_claims",
    "release_stale_claims",
    "request_images",
    "requests_by_status",
    "retry_failed_images",
    "seconds_until_delivery_due",
    "unclaimed_image_count",
    "unfinished_image_count",
    "unfinished_request_ids",
    "uningested_request_ids",
]
