"""memekit.analysis: what can be measured (spectra, priors, FID, data loading, latent data sets and
the autoencoders that make and decode them, plots)."""
