using System.Diagnostics.CodeAnalysis;

namespace Weft.Identity;

/// <summary>
/// A workload identity, <c>spiffe://&lt;trust-domain&gt;/ns/&lt;namespace&gt;/sa/&lt;service-account&gt;</c>.
/// Parsing follows the SPIFFE ID specification (scheme <c>spiffe</c>, lowercase trust domain of
/// <c>[a-z0-9._-]</c>, no port, userinfo, query or fragment, path segments of <c>[A-Za-z0-9._-]</c> that are
/// neither empty, "." nor "..", no percent-encoding, at most 2048 bytes) and then requires the Kubernetes
/// shape <c>/ns/N/sa/S</c>, the only shape Weft issues or authorizes.
/// </summary>
internal sealed record SpiffeId
{
    private const string Scheme = "spiffe://";
    private const int MaxLength = 2048;
    private const int MaxTrustDomainLength = 255;

    public SpiffeId(string trustDomain, string @namespace, string serviceAccount)
    {
        if (ValidateTrustDomain(trustDomain) is { } tdError)
        {
            throw new ArgumentException(tdError, nameof(trustDomain));
        }
        if (ValidateSegment(@namespace) is { } nsError)
        {
            throw new ArgumentException($"namespace: {nsError}", nameof(@namespace));
        }
        if (ValidateSegment(serviceAccount) is { } saError)
        {
            throw new ArgumentException($"service account: {saError}", nameof(serviceAccount));
        }
        TrustDomain = trustDomain;
        Namespace = @namespace;
        ServiceAccount = serviceAccount;
    }

    public string TrustDomain { get; }

    public string Namespace { get; }

    public string ServiceAccount { get; }

    /// <summary>The URI form, also what an X.509-SVID carries as its only URI SAN.</summary>
    public override string ToString() => $"{Scheme}{TrustDomain}/ns/{Namespace}/sa/{ServiceAccount}";

    public Uri ToUri() => new(ToString(), UriKind.Absolute);

    public static SpiffeId Parse(string value) =>
        TryParse(value, out var id, out var error) ? id : throw new FormatException($"not a SPIFFE ID '{value}': {error}");

    public static bool TryParse([NotNullWhen(true)] string? value, [NotNullWhen(true)] out SpiffeId? id) =>
        TryParse(value, out id, out _);

    /// <summary>Parses <paramref name="value"/>; on failure <paramref name="error"/> says which rule it broke.</summary>
    public static bool TryParse([NotNullWhen(true)] string? value, [NotNullWhen(true)] out SpiffeId? id, [NotNullWhen(false)] out string? error)
    {
        id = null;
        error = Check(value, out var trustDomain, out var segments);
        if (error is not null)
        {
            return false;
        }
        if (segments.Length != 4 || segments[0] != "ns" || segments[2] != "sa")
        {
            error = "path must be /ns/<namespace>/sa/<service-account>";
            return false;
        }
        id = new SpiffeId(trustDomain!, segments[1], segments[3]);
        return true;
    }

    /// <summary>Null when <paramref name="trustDomain"/> is a valid SPIFFE trust domain name, else why not.</summary>
    public static string? ValidateTrustDomain(string? trustDomain)
    {
        if (string.IsNullOrEmpty(trustDomain))
        {
            return "trust domain is missing";
        }
        if (trustDomain.Length > MaxTrustDomainLength)
        {
            return $"trust domain is longer than {MaxTrustDomainLength} characters";
        }
        foreach (var c in trustDomain)
        {
            if (c == ':')
            {
                return "trust domain must not carry a port";
            }
            if (c == '@')
            {
                return "trust domain must not carry userinfo";
            }
            if (!(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '.' or '-' or '_'))
            {
                return $"trust domain has character '{c}' (only lowercase letters, digits, '.', '-', '_')";
            }
        }
        return null;
    }

    private static string? ValidateSegment(string? segment)
    {
        if (string.IsNullOrEmpty(segment))
        {
            return "path segment is empty";
        }
        if (segment is "." or "..")
        {
            return $"path segment '{segment}' is not allowed";
        }
        foreach (var c in segment)
        {
            if (c == '%')
            {
                return "path must not be percent-encoded";
            }
            if (!(c is >= 'a' and <= 'z' or >= 'A' and <= 'Z' or >= '0' and <= '9' or '.' or '-' or '_'))
            {
                return $"path segment has character '{c}' (only letters, digits, '.', '-', '_')";
            }
        }
        return null;
    }

    private static string? Check(string? value, out string? trustDomain, out string[] segments)
    {
        trustDomain = null;
        segments = [];
        if (string.IsNullOrEmpty(value))
        {
            return "empty";
        }
        if (value.Length > MaxLength)
        {
            return $"longer than {MaxLength} bytes";
        }
        if (!value.StartsWith(Scheme, StringComparison.Ordinal))
        {
            return value.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)
                ? "scheme must be lowercase 'spiffe'"
                : "scheme must be 'spiffe://'";
        }
        if (value.Contains('?'))
        {
            return "must not have a query";
        }
        if (value.Contains('#'))
        {
            return "must not have a fragment";
        }
        var rest = value.AsSpan(Scheme.Length);
        var slash = rest.IndexOf('/');
        var domain = (slash < 0 ? rest : rest[..slash]).ToString();
        if (ValidateTrustDomain(domain) is { } tdError)
        {
            return tdError;
        }
        trustDomain = domain;
        if (slash < 0)
        {
            return "path is missing (a bare trust domain is not a workload identity)";
        }
        var path = rest[(slash + 1)..].ToString();
        segments = path.Split('/');
        foreach (var segment in segments)
        {
            if (ValidateSegment(segment) is { } segmentError)
            {
                return segment.Length == 0 && path.EndsWith('/') ? "path must not end with '/'" : segmentError;
            }
        }
        return null;
    }
}
