"""Prompt templates of StyleGAN-NADA: OpenAI's ImageNet prompt-engineering set (79 of 80) and the patch-loss parts."""
from __future__ import annotations

from collections.abc import Sequence

# OpenAI's 80 "prompt engineering for ImageNet" templates (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet),
# in their published order, without "a photo of many {}." -- exactly the 79 that StyleGAN-NADA averages its text
# direction over. Published data; the order matters only for bit-level reproduction of the mean.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

# The 15 animal-part prompts of NADA's (unused in the paper) patch-directional loss. Two of them lack the final
# period and "the {}s fangs." pluralises by appending "s"; both quirks are kept because they change the tokens.
PART_TEMPLATES: tuple[str, ...] = (
    "the paw of a {}.",
    "the nose of a {}.",
    "the eye of the {}.",
    "the ears of a {}.",
    "an eye of a {}.",
    "the tongue of a {}.",
    "the fur of the {}.",
    "colorful {} fur.",
    "a snout of a {}.",
    "the teeth of the {}.",
    "the {}s fangs.",
    "a claw of the {}.",
    "the face of the {}",
    "a neck of a {}",
    "the head of the {}",
)

# A single bare template: the text itself, used where NADA applies no templates (global loss, layer selection).
BARE_TEMPLATE: tuple[str, ...] = ("{}",)


class TemplateError(ValueError):
    """A prompt template cannot be filled (no templates, or a template without exactly one '{}' slot)."""


def fill_templates(text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """Return ``[template.format(text) for template in templates]`` after checking every template has one '{}'."""
    if isinstance(templates, str):
        raise TemplateError(f"templates must be a sequence of strings, got the single string {templates!r}; "
                            "wrap it in a tuple")
    if len(templates) == 0:
        raise TemplateError("no prompt templates given; pass at least one template such as '{}'")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise TemplateError(f"prompt template {template!r} must contain exactly one '{{}}' slot for the text")
    # str.replace rather than str.format so that braces inside the user's text cannot be misread as fields
    return [template.replace("{}", text) for template in templates]
