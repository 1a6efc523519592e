"""oodgen: new images of unseen domains from a frozen, pre-trained DDPM.

DDIM-invert a few hundred out-of-domain images into the model's noisy latent space x_t, where
they form a Gaussian-like cloud separable from the model's own prior; sample new latents there
(interpolation, fitted Gaussian) and denoise them with the unchanged model.

Notation map (paper -> code):
    x_0, x_{ood}        images in [-1, 1], tensors [N, C, H, W]          ``x0``
    x_t, x_{ood,T}      inverted latents at the operating timestep        ``latents`` / ``z``
    t_0 (authors), T    operating timestep of the latent space            ``t_end`` (DDIMSettings)
    S_inv               number of DDIM steps                              ``steps``
    alpha_bar_t         cumulative noise schedule, float64                ``alphas_cumprod``
    eta                 DDIM stochasticity ("bandwidth")                  ``eta``
    Interp(x^i, x^j)    lerp / slerp between two inverted latents         ``sampling.lerp`` / ``sampling.slerp``
    D_id, D_ood         in-domain / out-of-domain sets                    ``x_id`` / ``x_ood``
"""

__version__ = "0.1.0"
