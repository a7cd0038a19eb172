using System.Security.Cryptography;
using System.Text;
using Weft.Ca;
using Weft.Ca.Protocol;

namespace Weft.Fuzz;

/// <summary>
/// A Kubernetes-mode caller: the first line of the input is its <c>authorization</c> metadata (the bearer token
/// the CA checks before asking the API server), the rest is the API server's TokenReview answer (the in-memory
/// API server of <see cref="CaFuzzWorld"/> returns it as is). A well-formed request for demo/client then goes
/// through the real <see cref="ServiceAccountTokenAuthenticator"/>, the pod index and the CA. Refusals
/// (PERMISSION_DENIED, UNAVAILABLE for a TokenReview that failed) are the CA's answers; anything else escaping,
/// or a certificate issued for another identity, is a crash.
/// </summary>
internal sealed class CaTokenTarget : IFuzzTarget
{
    private static readonly Lazy<IstioCertificateRequest> Request = new(() =>
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        return CaFuzzWorld.Request("spiffe://cluster.local/ns/demo/sa/client", CaFuzzWorld.Csr(key, ["spiffe://cluster.local/ns/demo/sa/client"]));
    });

    public string Name => "ca-token";

    public string Description => "a caller's authorization metadata and the TokenReview answer into the CA's token authentication";

    public void Run(ReadOnlySpan<byte> input)
    {
        var newline = input.IndexOf((byte)'\n');
        var authorization = Encoding.UTF8.GetString(newline < 0 ? input : input[..newline]);
        CaFuzzWorld.Api.TokenReviewAnswer = newline < 0 ? [] : input[(newline + 1)..].ToArray();
        var caller = new CaCaller(null, authorization, "fuzz");
        CaResponses.Check(() => CaFuzzWorld.Kubernetes.CreateCertificateAsync(Request.Value, caller, CancellationToken.None), Request.Value);
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        const string token = "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImZ1enoifQ.eyJhdWQiOlsid2VmdC1jYSJdfQ.c2lnbmF0dXJl";
        static byte[] Answer(string status) => Encoding.UTF8.GetBytes(
            token + "\n" + """{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","metadata":{},"spec":{"token":"x"},"status":""" + status + "}");
        static string User(string name, string podName, string uid) =>
            "{\"username\":\"" + name + "\",\"uid\":\"9d0c\",\"groups\":[\"system:serviceaccounts\"],\"extra\":{\"" + ServiceAccountTokenAuthenticator.PodNameExtra
            + "\":[\"" + podName + "\"],\"" + ServiceAccountTokenAuthenticator.PodUidExtra + "\":[\"" + uid + "\"]}}";
        var agent = User("system:serviceaccount:weft-system:weft-agent", "weft-agent-abcde", CaFuzzWorld.AgentPodUid);
        yield return ("authenticated", Answer("""{"authenticated":true,"audiences":["weft-ca"],"user":""" + agent + "}"));
        yield return ("not-authenticated", Answer("""{"authenticated":false,"error":"token expired"}"""));
        yield return ("other-audience", Answer("""{"authenticated":true,"audiences":["api"],"user":""" + agent + "}"));
        yield return ("finished-pod", Answer("""{"authenticated":true,"audiences":["weft-ca"],"user":""" + User("system:serviceaccount:weft-system:weft-agent", "weft-agent-done", "u-finished") + "}"));
        yield return ("not-a-node-account", Answer("""{"authenticated":true,"audiences":["weft-ca"],"user":""" + User("system:serviceaccount:demo:client", "a1", "u-a1") + "}"));
        yield return ("not-bound-to-a-pod", Answer("""{"authenticated":true,"audiences":["weft-ca"],"user":{"username":"system:serviceaccount:weft-system:weft-agent"}}"""));
        yield return ("basic-scheme", Encoding.UTF8.GetBytes("Basic dXNlcjpwYXNz\n"));
        yield return ("empty-bearer", Encoding.UTF8.GetBytes("bearer   \n"));
    }
}
