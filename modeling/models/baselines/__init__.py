"""Baselines, each in its own module, all scored through the same ``score(image_probs, song_ids,
song_texts)`` as the paper's model:

- ``control``: the lyric-free control, cosine to the mean tag vector of the song's training images;
- ``neighbours``: lyric-free too, a kernel density over the song's training images (the hybrid's history side);
- ``popularity``: the same ranking for every image, by the song's posts and favorites;
- ``conse``: CONSE, pooled word vectors of the lyric against the top tags' name vectors (no training);
- ``semantic_indexing``: bag of words, polynomial (degree-2, low-rank) supervised semantic indexing;
- ``attentive_reader``: the Attentive Reader, attention with a learned query from the whole tag vector;
- ``minilm``: frozen all-MiniLM-L6-v2 over lyric chunks, a learned projection of the tag vector, InfoNCE;
- ``topics``: visual topics, k-means clusters of the training images and a softmax regression from the
  lyric's bag of words to the topics of its song's images.
"""
