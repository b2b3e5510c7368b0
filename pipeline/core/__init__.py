"""Layer 0, the values everything shares: windows, results and statuses, geometry, camera models,
errors, the failure digest. Imports nothing of the project (numpy and scipy at most)."""
