using System.Diagnostics.CodeAnalysis;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>
/// A node's identity towards the CA, <c>spiffe://&lt;trust-domain&gt;/weft/node/&lt;name&gt;</c>: what a node
/// certificate made by <c>weft ca issue-node</c> carries as its only URI SAN. It is no workload identity
/// (<see cref="SpiffeId"/> never parses it), so a node certificate cannot pass for a pod's.
/// </summary>
internal sealed record NodeIdentity
{
    private const string PathPrefix = "/weft/node/";

    public NodeIdentity(string trustDomain, string nodeName)
    {
        if (SpiffeId.ValidateTrustDomain(trustDomain) is { } tdError)
        {
            throw new ArgumentException(tdError, nameof(trustDomain));
        }
        if (ValidateNodeName(nodeName) is { } nameError)
        {
            throw new ArgumentException(nameError, nameof(nodeName));
        }
        TrustDomain = trustDomain;
        NodeName = nodeName;
    }

    public string TrustDomain { get; }

    public string NodeName { get; }

    public override string ToString() => $"spiffe://{TrustDomain}{PathPrefix}{NodeName}";

    public Uri ToUri() => new(ToString(), UriKind.Absolute);

    /// <summary>Parses the URI form; on failure <paramref name="error"/> says what is wrong.</summary>
    public static bool TryParse(string? value, [NotNullWhen(true)] out NodeIdentity? node, [NotNullWhen(false)] out string? error)
    {
        node = null;
        const string scheme = "spiffe://";
        if (value is null || !value.StartsWith(scheme, StringComparison.Ordinal))
        {
            error = "not a spiffe:// URI";
            return false;
        }
        var rest = value[scheme.Length..];
        var slash = rest.IndexOf('/');
        if (slash < 0)
        {
            error = "no path";
            return false;
        }
        var trustDomain = rest[..slash];
        if (SpiffeId.ValidateTrustDomain(trustDomain) is { } tdError)
        {
            error = tdError;
            return false;
        }
        var path = rest[slash..];
        if (!path.StartsWith(PathPrefix, StringComparison.Ordinal))
        {
            error = $"path is not {PathPrefix}<node>";
            return false;
        }
        var name = path[PathPrefix.Length..];
        if (ValidateNodeName(name) is { } nameError)
        {
            error = nameError;
            return false;
        }
        node = new NodeIdentity(trustDomain, name);
        error = null;
        return true;
    }

    /// <summary>Null when <paramref name="name"/> is a Kubernetes node name (an RFC 1123 subdomain), else why not.</summary>
    public static string? ValidateNodeName(string? name)
    {
        if (string.IsNullOrEmpty(name))
        {
            return "node name is empty";
        }
        if (name.Length > 253)
        {
            return "node name is longer than 253 characters";
        }
        foreach (var c in name)
        {
            if (!(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '.'))
            {
                return $"node name has character '{c}' (only lowercase letters, digits, '-', '.')";
            }
        }
        if (name[0] is '-' or '.' || name[^1] is '-' or '.')
        {
            return "node name must start and end with a letter or digit";
        }
        return null;
    }
}
