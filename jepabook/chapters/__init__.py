"""The chapters' own helpers, one module per notebook of chapters/ (named after it), and `images`,
what the image chapters share. The library (`jepabook.*`) never imports this package; chapters and
their tests do.
"""
