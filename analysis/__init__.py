"""memekit.analysis: what can be measured (spectra, priors, FID, data loading, plots)."""
