namespace Weft.Inventory;

/// <summary>
/// An object's id or a pod's uid as the cluster state holds it, one per pod in the cluster: a uid in the API
/// server's form (a lower-case GUID, 36 characters) as its 16 bytes instead of a 96-byte string; anything else
/// (a standalone file's <c>namespace/name</c>, a uid a hand-written inventory spells otherwise) as the string
/// itself. <see cref="Text"/> gives back exactly what was given.
/// </summary>
internal readonly struct CompactId : IEquatable<CompactId>
{
    private const int GuidLength = 36;

    private readonly Guid _guid;
    private readonly string? _text;

    private CompactId(Guid guid, string? text)
    {
        _guid = guid;
        _text = text;
    }

    /// <summary>The id as given; null for none.</summary>
    public string? Text => _text ?? (_guid == Guid.Empty ? null : _guid.ToString("D"));

    public static CompactId Of(string? id)
    {
        // Only a form that Guid.ToString("D") gives back character for character is held as a Guid: an upper-case
        // or braced uid, or the all-zero one, stays text so it is never respelled.
        if (id is { Length: GuidLength } && !id.AsSpan().ContainsAnyInRange('A', 'Z')
            && Guid.TryParseExact(id, "D", out var guid) && guid != Guid.Empty)
        {
            return new CompactId(guid, null);
        }

        return new CompactId(Guid.Empty, id);
    }

    public bool Equals(CompactId other) => _guid == other._guid && string.Equals(_text, other._text, StringComparison.Ordinal);

    public override bool Equals(object? obj) => obj is CompactId other && Equals(other);

    public override int GetHashCode() => _text?.GetHashCode(StringComparison.Ordinal) ?? _guid.GetHashCode();

    public override string ToString() => Text ?? "";

    public static bool operator ==(CompactId left, CompactId right) => left.Equals(right);

    public static bool operator !=(CompactId left, CompactId right) => !left.Equals(right);
}
