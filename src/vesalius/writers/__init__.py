"""DICOM SEG and SR (highdicom) and FHIR resources built from the engines' results.

``uids`` (deterministic output UIDs), ``seg`` (binary SEG, ``write_dicom``), ``sr`` (TID 1500 reports) and
``fhir`` (DiagnosticReport bundle, file and HTTP delivery). Import the module you need: each pulls in its own
heavy dependency (highdicom, fhir.resources, httpx), so the package itself imports nothing.
"""
