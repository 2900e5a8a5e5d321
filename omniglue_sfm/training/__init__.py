"""Training OmniGlue on synthetic homographies (``omniglue-sfm train``) and few-shot adaptation
to a user's photos (``omniglue-sfm finetune``). See train.py, data.py and configs/."""
