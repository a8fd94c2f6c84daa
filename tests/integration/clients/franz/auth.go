package main

// SASL as a Go service configures it with franz-go: sasl/plain and sasl/scram
// with a user name and password, or sasl/oauth with a token source that
// performs the OAuth 2.0 client_credentials grant (RFC 6749 §4.4) itself.
//
// franz-go re-authenticates on its own (KIP-368) when the broker (here, the
// appliance) answers SaslAuthenticate with a session lifetime; it then asks the
// mechanism again, so the token source must hand out a token that is still
// good: it fetches a new one once 80% of the old one's life has passed.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// authFlags are the command line's SASL settings.
type authFlags struct {
	mechanism, username, password         *string
	tokenEndpoint, clientID, clientSecret *string
	scope                                 *string
}

func registerAuthFlags(fs *flag.FlagSet) authFlags {
	return authFlags{
		mechanism:     fs.String("sasl-mechanism", "", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER; none if empty"),
		username:      fs.String("sasl-username", "", "user name (PLAIN, SCRAM)"),
		password:      fs.String("sasl-password", "", "password (PLAIN, SCRAM)"),
		tokenEndpoint: fs.String("oauth-token-endpoint", "", "OAuth 2.0 token endpoint URL (OAUTHBEARER)"),
		clientID:      fs.String("oauth-client-id", "", "client id for the client_credentials grant (OAUTHBEARER)"),
		clientSecret:  fs.String("oauth-client-secret", "", "client secret (OAUTHBEARER)"),
		scope:         fs.String("oauth-scope", "", "scope to ask for, if any (OAUTHBEARER)"),
	}
}

// opts are the client options for the flags: kgo.SASL with the mechanism, or none.
func (a authFlags) opts() ([]kgo.Opt, error) {
	mech, err := a.saslMechanism()
	if err != nil || mech == nil {
		return nil, err
	}
	return []kgo.Opt{kgo.SASL(mech)}, nil
}

func (a authFlags) saslMechanism() (sasl.Mechanism, error) {
	user, pass := *a.username, *a.password
	switch *a.mechanism {
	case "":
		return nil, nil
	case "PLAIN":
		return plain.Auth{User: user, Pass: pass}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism(), nil
	case "OAUTHBEARER":
		if *a.tokenEndpoint == "" || *a.clientID == "" {
			return nil, fmt.Errorf("OAUTHBEARER needs -oauth-token-endpoint and -oauth-client-id")
		}
		source := &tokenSource{endpoint: *a.tokenEndpoint, clientID: *a.clientID, secret: *a.clientSecret,
			scope: *a.scope, http: &http.Client{Timeout: 10 * time.Second}}
		return oauth.Oauth(func(ctx context.Context) (oauth.Auth, error) {
			token, err := source.token(ctx)
			return oauth.Auth{Token: token}, err
		}), nil
	default:
		return nil, fmt.Errorf("-sasl-mechanism %q is not PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER", *a.mechanism)
	}
}

// tokenSource fetches access tokens by client_credentials and reuses one until
// 80% of its life has passed.
type tokenSource struct {
	endpoint, clientID, secret, scope string
	http                              *http.Client

	mu        sync.Mutex
	cached    string
	refreshAt time.Time
}

func (s *tokenSource) token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached != "" && time.Now().Before(s.refreshAt) {
		return s.cached, nil
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if s.scope != "" {
		form.Set("scope", s.scope)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("token request to %s: %w", s.endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// client_secret_basic: both halves form-encoded first (RFC 6749 §2.3.1).
	req.SetBasicAuth(url.QueryEscape(s.clientID), url.QueryEscape(s.secret))
	began := time.Now()
	resp, err := s.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("token request to %s: %w", s.endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("token response from %s: %w", s.endpoint, err)
	}
	var answer struct {
		AccessToken      string  `json:"access_token"`
		ExpiresIn        float64 `json:"expires_in"`
		Error            string  `json:"error"`
		ErrorDescription string  `json:"error_description"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return "", fmt.Errorf("token response from %s (HTTP %d) is not JSON: %.200q", s.endpoint, resp.StatusCode, body)
	}
	if resp.StatusCode != http.StatusOK || answer.AccessToken == "" {
		return "", fmt.Errorf("token request to %s for client %q refused (HTTP %d): %s %s", s.endpoint, s.clientID,
			resp.StatusCode, answer.Error, answer.ErrorDescription)
	}
	life := time.Duration(answer.ExpiresIn * float64(time.Second))
	if life <= 0 {
		life = time.Minute // no expires_in: fetch again soon rather than keep it forever
	}
	s.cached, s.refreshAt = answer.AccessToken, began.Add(life*8/10)
	return s.cached, nil
}
