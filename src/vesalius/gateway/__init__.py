"""The PACS gateway: DICOM storage and query, study completion, routing, the durable job queue and its workers."""
