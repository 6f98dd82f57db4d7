"""Knowledge bases: documents a tenant uploads, indexed on the workers, cited in answers."""
