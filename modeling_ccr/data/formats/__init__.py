"""Research formats -> the region-corpus schema: Karpathy splits, SCAN precomp, bottom-up TSV, converters."""
