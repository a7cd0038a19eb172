using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Weft.Policy.Internal;

/// <summary>
/// One entry of a principals or namespaces list, with Istio's four forms: "abc" exact, "abc*" prefix, "*abc" suffix,
/// "*" presence (any non-empty value).
/// </summary>
internal readonly struct StringPattern
{
    private readonly Kind _kind;
    private readonly string _value;

    private StringPattern(Kind kind, string value)
    {
        _kind = kind;
        _value = value;
    }

    private enum Kind : byte
    {
        Exact,
        Prefix,
        Suffix,
        Presence,
    }

    public static StringPattern Parse(string text) => text switch
    {
        "*" => new(Kind.Presence, ""),
        ['*', ..] => new(Kind.Suffix, text[1..]),
        [.., '*'] => new(Kind.Prefix, text[..^1]),
        _ => new(Kind.Exact, text),
    };

    /// <summary>Plaintext connections present the empty value, which only a presence pattern could tell apart, and it does not match.</summary>
    public bool Matches(ReadOnlySpan<char> value) => _kind switch
    {
        Kind.Exact => value.SequenceEqual(_value),
        Kind.Prefix => value.Length > 0 && value.StartsWith(_value, StringComparison.Ordinal),
        Kind.Suffix => value.Length > 0 && value.EndsWith(_value, StringComparison.Ordinal),
        _ => value.Length > 0,
    };

    public static bool AnyMatches(StringPattern[] patterns, ReadOnlySpan<char> value)
    {
        foreach (var pattern in patterns)
        {
            if (pattern.Matches(value))
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>An address reduced to family and 128-bit number, so matching a block is one mask and compare. IPv4-mapped IPv6 counts as IPv4.</summary>
internal readonly struct IpKey(bool isV4, UInt128 value)
{
    public bool IsV4 { get; } = isV4;

    public UInt128 Value { get; } = value;

    public static IpKey From(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out var written))
        {
            return default;
        }

        if (written == 4)
        {
            return new IpKey(true, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        }

        if (bytes[..10].IndexOfAnyExcept((byte)0) < 0 && bytes[10] == 0xff && bytes[11] == 0xff)
        {
            return new IpKey(true, BinaryPrimitives.ReadUInt32BigEndian(bytes[12..]));
        }

        return new IpKey(false, BinaryPrimitives.ReadUInt128BigEndian(bytes));
    }
}

/// <summary>An ipBlocks entry: a single address or a CIDR block ("203.0.113.4", "203.0.113.0/24", "fd00::/8").</summary>
internal readonly struct IpBlock
{
    private readonly bool _isV4;
    private readonly UInt128 _network;
    private readonly UInt128 _mask;

    private IpBlock(bool isV4, UInt128 network, UInt128 mask)
    {
        _isV4 = isV4;
        _network = network;
        _mask = mask;
    }

    public bool Contains(IpKey address) => address.IsV4 == _isV4 && (address.Value & _mask) == _network;

    public static bool AnyContains(IpBlock[] blocks, IpKey address)
    {
        foreach (var block in blocks)
        {
            if (block.Contains(address))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Strict like Kubernetes: IPAddress.TryParse alone would read "10.1" as 10.0.0.1 and "010.0.0.1" as octal. Host bits
    /// in a block ("10.1.2.3/8") are masked off, as Go's netip (which Istio uses) does when matching.
    /// </summary>
    public static bool TryParse(string text, [NotNullWhen(false)] out string? error, out IpBlock block)
    {
        block = default;
        var slash = text.IndexOf('/');
        var addressText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addressText, out var address)
            || (address.AddressFamily == AddressFamily.InterNetwork && address.ToString() != addressText)
            || (address.AddressFamily == AddressFamily.InterNetworkV6 && address.ScopeId != 0))
        {
            error = $"'{text}' is not an IP address or CIDR block";
            return false;
        }

        var key = IpKey.From(address);
        var bits = address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        var prefix = bits;
        if (slash >= 0 && (!int.TryParse(text.AsSpan(slash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out prefix) || prefix > bits))
        {
            error = $"'{text}' has a prefix length outside 0-{bits}";
            return false;
        }

        // Shifts of UInt128 by 128 wrap around, so a /0 block is spelled out.
        var width = bits == 32 ? (UInt128)uint.MaxValue : UInt128.MaxValue;
        var mask = prefix == 0 ? UInt128.Zero : (width << (bits - prefix)) & width;
        block = new IpBlock(bits == 32, key.Value & mask, mask);
        error = null;
        return true;
    }
}

/// <summary>
/// One connection as the matchers read it: the principal without "spiffe://", the namespace, the source and the port.
/// Plaintext has an empty principal and namespace: Istio compares its mTLS-only fields to an empty value, so
/// principals/namespaces never match it while notPrincipals/notNamespaces do.
/// </summary>
internal readonly ref struct Peer
{
    private const string Scheme = "spiffe://";

    public Peer(in ConnectionAttributes connection)
    {
        var principal = connection.SourcePrincipal.AsSpan();
        if (principal.StartsWith(Scheme, StringComparison.Ordinal))
        {
            principal = principal[Scheme.Length..];
        }

        Principal = principal;
        Namespace = principal.IsEmpty ? default
            : connection.SourceNamespace is { Length: > 0 } ns ? ns.AsSpan()
            : NamespaceOf(principal);
        Source = IpKey.From(connection.SourceIp);
        Port = connection.DestinationPort;
    }

    public ReadOnlySpan<char> Principal { get; }

    public ReadOnlySpan<char> Namespace { get; }

    public IpKey Source { get; }

    public int Port { get; }

    /// <summary>"td/ns/&lt;ns&gt;/sa/&lt;sa&gt;" → "&lt;ns&gt;"; empty when the ID does not have that shape.</summary>
    private static ReadOnlySpan<char> NamespaceOf(ReadOnlySpan<char> principal)
    {
        var start = principal.IndexOf("/ns/", StringComparison.Ordinal);
        if (start < 0)
        {
            return default;
        }

        var rest = principal[(start + 4)..];
        var end = rest.IndexOf('/');
        return end < 0 ? rest : rest[..end];
    }
}
