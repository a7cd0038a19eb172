using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>What the CA decided about one request: the identity and key to sign for, or the reason it refused.</summary>
internal sealed record CertificateDecision
{
    public NodeIdentity? Node { get; init; }

    public SpiffeId? Identity { get; init; }

    /// <summary>Set when the caller is a gateway: the one identity it may ask for, its own.</summary>
    public SpiffeId? OnlyIdentity { get; init; }

    public PublicKey? SubjectKey { get; init; }

    /// <summary>A <see cref="RefusalReason"/> when refused, else null.</summary>
    public string? Reason { get; init; }

    /// <summary>For the CA's log only: never sent to the client.</summary>
    public string? Detail { get; init; }

    /// <summary>True when the refusal is the CA's own trouble (the API server unreachable), not the caller's: the client may retry.</summary>
    public bool Transient { get; init; }

    public bool Allowed => Reason is null;
}

/// <summary>
/// Decides every certificate request, never trusting the node's word:
/// <code>
///   caller ──ICaCallerAuthenticator (node certificate, or service-account token + TokenReview + its pod)──► node N
///   ImpersonatedIdentity ──SPIFFE ID spiffe://td/ns/NS/sa/SA in our trust domain──► identity
///   a gateway caller ──the requested identity is its own──► (else refused)
///   pod index ──some pod of NS/SA scheduled on N──► allowed for N
///   CSR ──size, PKCS#10 signature verifies, exactly one subject alternative name: the URI of identity──► its public key
/// </code>
/// Everything else in the CSR (subject, other extensions) is ignored: the CA sets the certificate's contents itself.
/// </summary>
internal sealed class CertificateRequestAuthorizer
{
    private const string SubjectAltNameOid = "2.5.29.17";
    private static readonly Asn1Tag UriTag = new(TagClass.ContextSpecific, 6);

    private readonly string _trustDomain;
    private readonly ICaCallerAuthenticator _callers;
    private readonly IPodPlacements _placements;
    private readonly int _maxCsrBytes;

    public CertificateRequestAuthorizer(string trustDomain, ICaCallerAuthenticator callers, IPodPlacements placements, int maxCsrBytes)
    {
        _trustDomain = trustDomain;
        _callers = callers;
        _placements = placements;
        _maxCsrBytes = maxCsrBytes;
    }

    /// <summary>How callers prove which node they are.</summary>
    public ICaCallerAuthenticator Callers => _callers;

    public async Task<CertificateDecision> AuthorizeAsync(CaCaller caller, string? requestedIdentity, string csrPem, CancellationToken cancellationToken)
    {
        var authenticated = await _callers.AuthenticateAsync(caller, cancellationToken).ConfigureAwait(false);
        return authenticated.Allowed ? Authorize(authenticated.Node!, requestedIdentity, csrPem, authenticated.OnlyIdentity) : authenticated;
    }

    /// <summary>The decision for a caller already authenticated as <paramref name="node"/> (a gateway: also as <paramref name="onlyIdentity"/>).</summary>
    public CertificateDecision Authorize(NodeIdentity node, string? requestedIdentity, string csrPem, SpiffeId? onlyIdentity = null)
    {
        if (string.IsNullOrEmpty(requestedIdentity))
        {
            return Refuse(RefusalReason.IdentityMissing, "no ImpersonatedIdentity in the request metadata", node);
        }
        if (!SpiffeId.TryParse(requestedIdentity, out var identity, out var idError))
        {
            return Refuse(RefusalReason.IdentityInvalid, $"requested identity '{Shorten(requestedIdentity)}' is not spiffe://td/ns/N/sa/S: {idError}", node);
        }
        if (identity.TrustDomain != _trustDomain)
        {
            return Refuse(RefusalReason.IdentityForeignTrustDomain, $"requested identity {identity} is not in trust domain {_trustDomain}", node);
        }
        if (onlyIdentity is not null && identity != onlyIdentity)
        {
            return Refuse(RefusalReason.IdentityNotCallersOwn, $"the caller is the gateway {onlyIdentity} and may ask only for its own identity, not {identity}", node);
        }
        if (!_placements.HasPod(node.NodeName, identity.Namespace, identity.ServiceAccount))
        {
            return Refuse(RefusalReason.NoPodOnNode,
                $"no pod of {identity.Namespace}/{identity.ServiceAccount} is scheduled on node {node.NodeName} ({_placements.Describe()})", node);
        }

        if (csrPem.Length > _maxCsrBytes)
        {
            return Refuse(RefusalReason.CsrTooLarge, $"CSR of {csrPem.Length} bytes exceeds the limit of {_maxCsrBytes}", node);
        }
        CertificateRequest csr;
        try
        {
            // Extensions are loaded only to be inspected; the certificate is built from the public key alone.
            csr = CertificateRequest.LoadSigningRequestPem(csrPem, HashAlgorithmName.SHA256, CertificateRequestLoadOptions.UnsafeLoadCertificateExtensions);
        }
        catch (Exception e) when (UnreadableCrypto.Is(e))
        {
            return Refuse(RefusalReason.CsrInvalid, $"CSR is not a valid, self-signed PKCS#10 request: {e.Message}", node);
        }
        if (KeyProblem(csr.PublicKey) is { } keyProblem)
        {
            return Refuse(RefusalReason.CsrInvalid, keyProblem, node);
        }

        List<string> uris;
        int otherNames;
        int sanExtensions;
        try
        {
            (uris, otherNames, sanExtensions) = Names(csr.CertificateExtensions);
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException)
        {
            return Refuse(RefusalReason.CsrInvalid, $"CSR subject alternative names are malformed: {e.Message}", node);
        }
        if (sanExtensions != 1 || otherNames != 0 || uris.Count != 1)
        {
            return Refuse(RefusalReason.CsrNames,
                $"CSR must name exactly one URI and nothing else; it has {sanExtensions} SAN extensions, {uris.Count} URIs ({Shorten(string.Join(", ", uris))}) and {otherNames} other names", node);
        }
        if (!string.Equals(uris[0], identity.ToString(), StringComparison.Ordinal))
        {
            return Refuse(RefusalReason.CsrIdentityMismatch, $"CSR names {Shorten(uris[0])}, but the request is for {identity}", node);
        }
        return new CertificateDecision { Node = node, Identity = identity, SubjectKey = csr.PublicKey };
    }

    /// <summary>Every URI and the count of other general names over all subjectAltName extensions, read with the framework's ASN.1 reader.</summary>
    internal static (List<string> Uris, int OtherNames, int Extensions) Names(IEnumerable<X509Extension> extensions)
    {
        var uris = new List<string>();
        var other = 0;
        var count = 0;
        foreach (var extension in extensions)
        {
            if (extension.Oid?.Value != SubjectAltNameOid)
            {
                continue;
            }
            count++;
            var reader = new AsnReader(extension.RawData, AsnEncodingRules.DER);
            var names = reader.ReadSequence();
            reader.ThrowIfNotEmpty();
            while (names.HasData)
            {
                if (names.PeekTag().HasSameClassAndValue(UriTag))
                {
                    uris.Add(names.ReadCharacterString(UniversalTagNumber.IA5String, UriTag));
                }
                else
                {
                    names.ReadEncodedValue();
                    other++;
                }
            }
        }
        return (uris, other, count);
    }

    private static string? KeyProblem(PublicKey key)
    {
        using (var ec = key.GetECDsaPublicKey())
        {
            if (ec is not null)
            {
                return ec.KeySize is 256 or 384 ? null : $"CSR has an ECDSA key of {ec.KeySize} bits (P-256 or P-384 only)";
            }
        }
        using (var rsa = key.GetRSAPublicKey())
        {
            if (rsa is not null)
            {
                return rsa.KeySize is >= 2048 and <= 8192 ? null : $"CSR has an RSA key of {rsa.KeySize} bits (2048 to 8192 only)";
            }
        }
        return $"CSR has a {key.Oid.FriendlyName ?? key.Oid.Value} key (ECDSA or RSA only)";
    }

    internal static CertificateDecision Refuse(string reason, string detail, NodeIdentity? node = null) =>
        new() { Reason = reason, Detail = detail, Node = node };

    /// <summary>Keeps what a caller sent from flooding the log.</summary>
    internal static string Shorten(string value) => value.Length <= 300 ? value : value[..300] + "…";
}
