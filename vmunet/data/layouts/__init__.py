"""Finders for the supported on-disk layouts, one module per data-set family.

``folder`` (VM-UNet ``<split>/images`` + ``masks``), ``isic``, ``synapse`` (TransUNet
and raw BTCV), ``datalist`` (MONAI datalist JSON) and ``nnunet``. Each finder
returns :class:`vmunet.data.dataset_classes.Pair` or ``VolumeSource`` entries;
:func:`vmunet.data.factory.build_dataset` turns them into datasets.
"""

__all__: list[str] = []
