namespace Weft.Hbone.Internal.Hpack;

/// <summary>
/// The HPACK dynamic table (RFC 7541 section 2.3.2): newest entry first, an entry's size is
/// name + value octets + 32, oldest entries evicted to stay within the maximum size.
/// </summary>
internal sealed class HpackDynamicTable(int maxSize)
{
    private (string Name, string Value)[] _ring = new (string, string)[16];
    private int _newest = -1; // slot of the newest entry
    private int _count;

    public int Size { get; private set; }
    public int MaxSize { get; private set; } = maxSize;
    public int Count => _count;

    public static int EntrySize(string name, string value) => name.Length + value.Length + 32;

    /// <summary>Entry by 1-based dynamic index (1 = newest).</summary>
    public (string Name, string Value) Get(int index)
    {
        int slot = (_newest - (index - 1) + _ring.Length) % _ring.Length;
        return _ring[slot];
    }

    public void SetMaxSize(int maxSize)
    {
        MaxSize = maxSize;
        EvictUntil(maxSize);
    }

    public void Add(string name, string value)
    {
        int size = EntrySize(name, value);
        if (size > MaxSize)
        {
            // An entry larger than the table empties it and is not stored (section 4.4).
            EvictUntil(0);
            return;
        }
        EvictUntil(MaxSize - size);
        if (_count == _ring.Length)
        {
            Grow();
        }
        _newest = (_newest + 1) % _ring.Length;
        _ring[_newest] = (name, value);
        _count++;
        Size += size;
    }

    private void EvictUntil(int targetSize)
    {
        while (Size > targetSize && _count > 0)
        {
            int oldest = (_newest - (_count - 1) + _ring.Length) % _ring.Length;
            var (name, value) = _ring[oldest];
            Size -= EntrySize(name, value);
            _ring[oldest] = default;
            _count--;
        }
    }

    private void Grow()
    {
        var bigger = new (string, string)[_ring.Length * 2];
        for (int i = 0; i < _count; i++)
        {
            // oldest first into the new ring
            bigger[i] = Get(_count - i);
        }
        _ring = bigger;
        _newest = _count - 1;
    }
}
