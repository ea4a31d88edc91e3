"""The conversation router: channels in, bots and contact centers out."""
